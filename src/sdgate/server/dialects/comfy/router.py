"""ComfyUI's routes (``reference/other_apis.md`` §1.2), each at its plain path and under ``/api``.

Every route acts for the caller only: its prompts, its queue, its history, its files; an admin (and
the one caller of a server without credentials) sees everyone's, as in the native API. Bodies are
read as leniently as ComfyUI reads them; anything wrong is a 4xx in ComfyUI's ``/prompt`` error
shape (``{"error": {type, message, details, extra_info}, "node_errors": {}}``).

Queue order: ``front: true`` queues the prompt at priority 1 (ahead of every plain prompt);
otherwise it joins the queue at priority 0, in the server's fair order across callers. ``number``
is kept and shown as the prompt's number (``/queue``, ``/history``); without it a prompt is
numbered in submission order (negative with ``front``, as ComfyUI numbers those).
"""

from __future__ import annotations

import json
import logging
import os
import platform
import sys
import uuid
from importlib import metadata as importlib_metadata
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, WebSocket
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

import sdgate
from sdgate.core.errors import InvalidRequest, NotFound, SdgateError
from sdgate.core.jobs import ControlAction, JobState
from sdgate.server.auth import Principal, current_principal
from sdgate.server.deps import CurrentPrincipal, ServicesDep, image_limits
from sdgate.server.dialects.comfy import files, translate
from sdgate.server.dialects.comfy.protocol import (
    DEFAULT_HISTORY,
    MAX_HISTORY,
    ClearOrDelete,
    ComfyError,
    InterruptRequest,
    PromptRequest,
)
from sdgate.server.dialects.comfy.state import ComfyState, comfy_state
from sdgate.server.dialects.comfy.submit import submit_prompt
from sdgate.server.dialects.comfy.ws import DIALECT, prompt_id_of, queue_remaining, server_features
from sdgate.server.errors import DialectRoute
from sdgate.server.logs import LogOnce
from sdgate.server.services import Services
from sdgate.server.wire import multipart_body

log = logging.getLogger("sdgate.comfy")
_unknown_fields = LogOnce(log, "accepting and ignoring unknown ComfyUI field(s): %s")
MAX_JOBS = 1000  # jobs one queue listing reads


class ComfyRoute(DialectRoute):
    dialect = DIALECT
    error_body = ComfyError
    validation_body = ComfyError

    @staticmethod
    def render_error(err: SdgateError) -> JSONResponse:
        return JSONResponse(translate.error_body(err), status_code=err.status_code,
                            headers={"X-Error-Code": err.code})

    @staticmethod
    def render_validation(errors: list[dict[str, Any]]) -> JSONResponse:
        return JSONResponse(_invalid_body(errors), status_code=400)


router = APIRouter(route_class=ComfyRoute, tags=["ComfyUI"])


def _json_body(model: type[Any], *, required: bool = True, needs: tuple[str, ...] = ()) -> dict[str, Any]:
    """``openapi_extra`` documenting a JSON body the route reads itself (leniently, as ComfyUI)."""
    schema = model.model_json_schema()
    if needs:
        schema["required"] = sorted({*schema.get("required", ()), *needs})
    return {"requestBody": {"required": required, "content": {"application/json": {"schema": schema}}}}


_EMPTY_200: dict[int | str, dict[str, Any]] = {200: {"description": "done (an empty body, as ComfyUI)"}}
_UPLOAD_FORM = multipart_body(
    {"properties": {
        "overwrite": {"type": "string", "enum": ["true", "false", "1", "0"]},
        "subfolder": {"type": "string", "maxLength": 64, "pattern": "^[A-Za-z0-9_-]*$"},
        "type": {"type": "string", "enum": ["input", "temp", "output"]},
    }},
    files={"image": "the image file; its file name is the name it is filed under"},
    required=("image",),
)


def _invalid_body(errors: list[dict[str, Any]]) -> dict[str, Any]:
    lines = []
    for e in errors[:20]:
        loc = ".".join(str(p) for p in e.get("loc", ()) if p not in ("body", "query", "path"))
        lines.append(f"{loc or 'body'}: {e.get('msg', 'invalid')}")
    return {"error": {"type": "invalid_request", "message": lines[0] if lines else "invalid request",
                      "details": "\n".join(lines), "extra_info": {}}, "node_errors": {}}


async def _json(request: Request) -> Any:
    """The body as JSON; ``{}`` when empty. ``InvalidRequest`` for what is not JSON."""
    raw = await request.body()
    if not raw.strip():
        return {}
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):
        raise InvalidRequest("body: not valid JSON", field="body") from None


def _parse(model: type[Any], data: Any) -> Any:
    if not isinstance(data, dict):
        raise InvalidRequest("body: a JSON object is needed", field="body")
    try:
        parsed = model.model_validate(data)
    except ValidationError as exc:
        raise _BadBody(exc.errors(include_url=False)) from None
    _unknown_fields.names(sorted(parsed.model_extra or {}))
    return parsed


class _BadBody(InvalidRequest):
    def __init__(self, errors: list[dict[str, Any]]) -> None:
        body = _invalid_body(errors)
        super().__init__(body["error"]["message"], field="body")


# -- prompts ---------------------------------------------------------------------------------------


@router.post("/prompt", responses={200: {"description": "{prompt_id, number, node_errors}"}},
             openapi_extra=_json_body(PromptRequest, needs=("prompt",)))
async def post_prompt(request: Request, services: ServicesDep, principal: CurrentPrincipal) -> Response:
    body: PromptRequest = _parse(PromptRequest, await _json(request))
    return await submit_prompt(services, comfy_state(services), principal, body)


@router.get("/prompt")
async def get_prompt(services: ServicesDep, principal: CurrentPrincipal) -> dict[str, Any]:
    remaining = await run_in_threadpool(queue_remaining, services, principal.owner_filter)
    return {"exec_info": {"queue_remaining": remaining}}


def _jobs(services: Services, principal: Principal, state: JobState) -> list[Any]:
    return services.store.list(states=(state,), dialect=DIALECT, owner=principal.owner_filter, limit=MAX_JOBS)


@router.get("/queue")
async def get_queue(services: ServicesDep, principal: CurrentPrincipal) -> dict[str, Any]:
    def read() -> dict[str, Any]:
        running = _jobs(services, principal, JobState.RUNNING)
        pending = _jobs(services, principal, JobState.QUEUED)
        return {
            "queue_running": [translate.queue_item(j, prompt_id_of(j)) for j in reversed(running)],
            "queue_pending": [translate.queue_item(j, prompt_id_of(j)) for j in reversed(pending)],
        }

    return await run_in_threadpool(read)


@router.post("/queue", response_class=Response, responses=_EMPTY_200,
             openapi_extra=_json_body(ClearOrDelete, required=False))
async def post_queue(request: Request, services: ServicesDep, principal: CurrentPrincipal) -> Response:
    body: ClearOrDelete = _parse(ClearOrDelete, await _json(request))
    state = comfy_state(services)

    def act() -> None:
        if body.clear:
            for job in _jobs(services, principal, JobState.QUEUED):
                _control(services, job.id, ControlAction.CANCEL, only=JobState.QUEUED)
        for prompt_id in body.delete or ():
            job_id = state.job_of(prompt_id, principal)
            if job_id is not None:
                _control(services, job_id, ControlAction.CANCEL, only=JobState.QUEUED)

    await run_in_threadpool(act)
    return Response(status_code=200)


@router.post("/interrupt", response_class=Response, responses=_EMPTY_200,
             openapi_extra=_json_body(InterruptRequest, required=False))
async def post_interrupt(request: Request, services: ServicesDep, principal: CurrentPrincipal) -> Response:
    try:
        data = await _json(request)
    except InvalidRequest:
        data = None  # ComfyUI takes a body that is not JSON as "interrupt whatever runs"
    body: InterruptRequest = _parse(InterruptRequest, data if isinstance(data, dict) else {})
    state = comfy_state(services)

    def act() -> None:
        if body.prompt_id is not None:
            job_id = state.job_of(body.prompt_id, principal)
            if job_id is not None:
                _control(services, job_id, ControlAction.CANCEL, only=JobState.RUNNING)
            return
        for job in _jobs(services, principal, JobState.RUNNING):
            _control(services, job.id, ControlAction.CANCEL, only=JobState.RUNNING)

    await run_in_threadpool(act)
    return Response(status_code=200)


def _control(services: Services, job_id: str, action: ControlAction, *, only: JobState) -> None:
    try:
        job = services.store.get(job_id)
        if job.state is only:
            services.store.request_control(job_id, action)
    except SdgateError as exc:  # it ended meanwhile: nothing to stop
        log.debug("comfy: %s of %s not applied: %s", action.value, job_id, exc)


# -- history ---------------------------------------------------------------------------------------


@router.get("/history")
async def get_history(
    services: ServicesDep,
    principal: CurrentPrincipal,
    max_items: Annotated[int | None, Query(ge=1, le=MAX_HISTORY)] = None,
    offset: Annotated[int | None, Query(ge=-1, le=10**9)] = None,
) -> dict[str, Any]:
    state = comfy_state(services)
    return await run_in_threadpool(state.history, principal, max_items or DEFAULT_HISTORY,
                                   offset if offset is not None and offset >= 0 else None)


@router.get("/history/{prompt_id}")
async def get_history_entry(
    prompt_id: str, services: ServicesDep, principal: CurrentPrincipal
) -> dict[str, Any]:
    return await run_in_threadpool(comfy_state(services).history_entry, principal, prompt_id)


@router.post("/history", response_class=Response, responses=_EMPTY_200,
             openapi_extra=_json_body(ClearOrDelete, required=False))
async def post_history(request: Request, services: ServicesDep, principal: CurrentPrincipal) -> Response:
    body: ClearOrDelete = _parse(ClearOrDelete, await _json(request))
    state = comfy_state(services)

    def act() -> None:
        if body.clear:
            state.files.hide(principal.id, None, every_owner=principal.is_admin)
        if body.delete:
            state.files.hide(principal.id, body.delete, every_owner=principal.is_admin)

    await run_in_threadpool(act)
    return Response(status_code=200)


# -- files -------------------------------------------------------------------------------------------


@router.post("/upload/image", openapi_extra=_UPLOAD_FORM)
async def upload_image(
    request: Request, services: ServicesDep, principal: CurrentPrincipal
) -> dict[str, str]:
    return await comfy_state(services).upload(request, principal, mask=False, limits=image_limits(services))


@router.post("/upload/mask")
async def upload_mask(
    request: Request, services: ServicesDep, principal: CurrentPrincipal
) -> dict[str, str]:
    return await comfy_state(services).upload(request, principal, mask=True, limits=image_limits(services))


@router.get("/view", response_class=Response,
            responses={200: {"content": {"image/png": {}}}, 403: {}, 404: {}})
async def view(
    services: ServicesDep,
    principal: CurrentPrincipal,
    filename: Annotated[str | None, Query(max_length=400)] = None,
    type: Annotated[str | None, Query(max_length=16)] = None,  # noqa: A002 - ComfyUI's name
    subfolder: Annotated[str | None, Query(max_length=400)] = None,
    preview: Annotated[str | None, Query(max_length=16)] = None,
    channel: Annotated[str | None, Query(max_length=8)] = None,
) -> Response:
    ref = files.view_ref(filename, subfolder, type)
    state = comfy_state(services)

    def read() -> tuple[bytes, str]:
        image_id = files.find_image(state.files, services.store, principal, ref)
        try:
            data = services.images.get(image_id)
        except NotFound:
            raise NotFound(f"{ref.name} not found") from None
        return files.render(data, ref.name, preview=preview, channel=channel)

    data, media = await run_in_threadpool(read)
    return Response(data, media_type=media, headers=files.disposition(ref.name))


# -- what the server has ---------------------------------------------------------------------------


@router.get("/object_info")
async def object_info(services: ServicesDep, principal: CurrentPrincipal) -> dict[str, Any]:
    return await run_in_threadpool(comfy_state(services).object_info, principal, None)


@router.get("/object_info/{node_class}")
async def object_info_node(
    node_class: str, services: ServicesDep, principal: CurrentPrincipal
) -> dict[str, Any]:
    return await run_in_threadpool(comfy_state(services).object_info, principal, node_class)


@router.get("/embeddings")
async def embeddings(services: ServicesDep) -> list[str]:
    found = await run_in_threadpool(services.catalog.list_files, "embeddings")
    return [f.name for f in found]


@router.get("/models")
async def model_folders() -> list[str]:
    return list(ComfyState.FOLDERS)


@router.get("/models/{folder}", responses={404: {}})
async def model_files(folder: str, services: ServicesDep) -> list[str]:
    if folder not in ComfyState.FOLDERS:
        raise NotFound(f"no model folder {folder[:40]!r}")
    return await run_in_threadpool(comfy_state(services).folder_files, folder)


@router.get("/extensions")
async def extensions() -> list[str]:
    return []


@router.get("/features")
async def features(services: ServicesDep) -> dict[str, Any]:
    return server_features(services)


@router.get("/system_stats")
async def system_stats(services: ServicesDep) -> dict[str, Any]:
    workers = await run_in_threadpool(services.store.list_workers)
    devices = []
    for index, worker in enumerate(w for w in workers if not w.stale):
        device = worker.device or "cpu"
        free = worker.free_memory_bytes or 0
        devices.append({"name": device, "type": device.split(":")[0], "index": index,
                        "vram_total": free, "vram_free": free, "torch_vram_total": free,
                        "torch_vram_free": free})
    total, free = _memory()
    return {
        "system": {
            "os": os.name,
            "ram_total": total,
            "ram_free": free,
            "comfyui_version": f"sdgate {sdgate.__version__}",
            "required_frontend_version": "",
            "installed_templates_version": "",
            "required_templates_version": "",
            "python_version": sys.version,
            "pytorch_version": _version("torch"),
            "embedded_python": False,
            "argv": ["sdgate"],
            "platform": platform.platform(terse=True),
        },
        "devices": devices,
    }


def _memory() -> tuple[int, int]:
    try:
        page = os.sysconf("SC_PAGE_SIZE")
        return page * os.sysconf("SC_PHYS_PAGES"), page * os.sysconf("SC_AVPHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0, 0


def _version(package: str) -> str:
    try:
        return importlib_metadata.version(package)
    except importlib_metadata.PackageNotFoundError:
        return ""


# -- the socket --------------------------------------------------------------------------------------


@router.websocket("/ws")
async def websocket(websocket: WebSocket) -> None:
    services = websocket.app.state.services
    client_id = websocket.query_params.get("clientId") or None
    if client_id is not None and (len(client_id) > 64 or not client_id.isprintable()):
        client_id = uuid.uuid4().hex
    await comfy_state(services).sockets.serve(websocket, current_principal(websocket.scope), client_id)


# Every route again under /api (ComfyUI's frontend uses that form); /api/v1/... is the native API's.
api_router = APIRouter(prefix="/api", route_class=ComfyRoute, tags=["ComfyUI"])
api_router.include_router(router)
