"""``POST /prompt``: a ComfyUI prompt becomes a job, or a 400 in ComfyUI's shape leaving nothing
behind.

1. validate the graph (``core.comfy.validate``) against what this server runs: its checkpoints,
   LoRAs, VAEs and upscalers by ComfyUI file name, and the caller's own uploaded images;
2. resolve each LoadImage file to its stored image (a file whose bytes are gone is the same
   ``node_errors`` 400 as an unknown one);
3. reserve the prompt id (the client's, when it gave one no prompt has; else the job's id) and its
   number;
4. submit through ``jobflow.submit`` (limits, the content filter on the graph's texts, quotas), as
   the caller's job of dialect ``comfy``.
"""

from __future__ import annotations

import json
import math
import uuid
from typing import Any

from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from sdgate.core.comfy.validate import GraphInvalid, GraphLimits, ValidatedGraph, validate_prompt
from sdgate.core.errors import InvalidRequest, ModelNotFound
from sdgate.core.requests import GraphRequest
from sdgate.server import jobflow
from sdgate.server.auth import Principal
from sdgate.server.dialects.comfy import files, translate
from sdgate.server.dialects.comfy.protocol import MAX_EXTRA_DATA_BYTES, PromptRequest
from sdgate.server.dialects.comfy.state import ComfyState
from sdgate.server.dialects.comfy.ws import DIALECT
from sdgate.server.services import Services

_LOADERS = ("LoadImage", "LoadImageMask")


def no_prompt() -> dict[str, Any]:
    return {"error": {"type": "no_prompt", "message": "No prompt provided", "details": "No prompt provided",
                      "extra_info": {}}, "node_errors": {}}


def missing_files(graph: dict[str, Any], missing: set[str]) -> dict[str, Any]:
    """ComfyUI's 400 for LoadImage files that are not there (``custom_validation_failed``)."""
    node_errors: dict[str, Any] = {}
    for node_id, node in graph.items():
        if not isinstance(node, dict) or node.get("class_type") not in _LOADERS:
            continue
        value = (node.get("inputs") or {}).get("image")
        if value in missing:
            node_errors[node_id] = {
                "errors": [{"type": "custom_validation_failed",
                            "message": "Custom validation failed for node",
                            "details": f"image - Invalid image file: {value}",
                            "extra_info": {"input_name": "image", "received_value": value}}],
                "dependent_outputs": [],
                "class_type": node.get("class_type"),
            }
    details = "\n".join(e["errors"][0]["details"] for e in node_errors.values())
    return {"error": {"type": "prompt_outputs_failed_validation",
                      "message": "Prompt outputs failed validation",
                      "details": details, "extra_info": {}}, "node_errors": node_errors}


MAX_DEPTH = 64


def check_storable(value: Any, *, field: str) -> None:
    """``InvalidRequest`` for JSON a job cannot store on every database: a NUL character in a string
    or key (PostgreSQL's JSONB refuses it), a number that is not finite, nesting past ``MAX_DEPTH``."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise InvalidRequest(f"{field}: nested more than {MAX_DEPTH} levels deep", field=field)
        if isinstance(item, str):
            if "\x00" in item:
                raise InvalidRequest(f"{field}: text must not hold NUL characters", field=field)
        elif isinstance(item, float):
            if not math.isfinite(item):
                raise InvalidRequest(f"{field}: numbers must be finite", field=field)
        elif isinstance(item, dict):
            for key, child in item.items():
                stack.append((key, depth))
                stack.append((child, depth + 1))
        elif isinstance(item, list | tuple):
            stack.extend((child, depth + 1) for child in item)


class _Missing(Exception):
    def __init__(self, body: dict[str, Any]) -> None:
        super().__init__("missing files")
        self.body = body


def _prepare(
    services: Services, state: ComfyState, principal: Principal, body: PromptRequest
) -> tuple[ValidatedGraph, tuple[tuple[str, str], ...], str | None]:
    assert body.prompt is not None
    targets = list(body.partial_execution_targets) if body.partial_execution_targets else None
    validated = validate_prompt(body.prompt, state.choices(principal),
                                GraphLimits.from_settings(services.settings), targets=targets)
    images: list[tuple[str, str]] = []
    missing: set[str] = set()
    for name in validated.input_images:
        subfolder, plain = files.split_input_name(name)
        image_id = state.files.find(principal.id, "input", subfolder, plain)
        if image_id is None or not services.images.exists(image_id):
            missing.add(name)
        else:
            images.append((name, image_id))
    if missing:
        raise _Missing(missing_files(validated.graph, missing))
    model = None
    if validated.checkpoint:
        try:
            model = services.catalog.resolve(validated.checkpoint).name
        except ModelNotFound:
            model = None  # the engine's own model (the null engine): it answers by name when it runs
    return validated, tuple(images), model


async def submit_prompt(services: Services, state: ComfyState, principal: Principal,
                        body: PromptRequest) -> JSONResponse:
    if body.prompt is None:
        return JSONResponse(no_prompt(), status_code=400)
    check_storable(body.extra_data, field="extra_data")
    check_storable(body.prompt, field="prompt")
    if len(json.dumps(body.extra_data, default=str)) > MAX_EXTRA_DATA_BYTES:
        raise InvalidRequest(f"extra_data: at most {MAX_EXTRA_DATA_BYTES} bytes of JSON", field="extra_data")
    try:
        validated, images, model = await run_in_threadpool(_prepare, services, state, principal, body)
    except GraphInvalid as exc:
        return JSONResponse(exc.body, status_code=400)
    except _Missing as exc:
        return JSONResponse(exc.body, status_code=400)

    prompt_id = body.prompt_id
    seq = await run_in_threadpool(state.files.reserve_prompt, principal.id, prompt_id) if prompt_id else None
    if seq is None:  # no id given, or one already used: the job's id, known once it exists
        prompt_id = None
        seq = await run_in_threadpool(state.files.reserve_prompt, principal.id, f"pending-{uuid.uuid4().hex}")
        assert seq is not None
    number: float = body.number if body.number is not None else float(-seq if body.front else seq)
    request = GraphRequest(
        graph=validated.graph,
        outputs=tuple(validated.outputs),
        images=images,
        client_id=body.client_id or None,
        extra_data=translate.clean_extra_data(body.extra_data, body.client_id),
        number=number,
        image_count=validated.image_count,
        model=model,
    )
    try:
        job = await jobflow.submit(services, request, dialect=DIALECT, principal=principal,
                                   priority=1 if body.front else 0,
                                   metadata={"comfy_prompt_id": prompt_id} if prompt_id else None)
    except BaseException:
        await run_in_threadpool(state.files.drop_prompt, seq)
        raise
    await run_in_threadpool(state.files.attach_job, seq, job.id, prompt_id=None if prompt_id else job.id)
    shown: float | int = int(number) if float(number).is_integer() else number
    return JSONResponse({"prompt_id": prompt_id or job.id, "number": shown,
                         "node_errors": validated.node_errors or {}})
