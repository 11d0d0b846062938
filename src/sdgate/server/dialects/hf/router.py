"""Hugging Face Inference routes: ``POST /models/{model_id}`` answering raw image bytes."""

from __future__ import annotations

import logging
from typing import Annotated, Any

from fastapi import APIRouter, Body, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.convertors import PathConvertor, register_url_convertor

from sdgate.core.errors import GenerationFailed, SdgateError
from sdgate.server import content, imaging, jobflow
from sdgate.server.deps import CurrentPrincipal, ServicesDep
from sdgate.server.dialects.hf import translate
from sdgate.server.dialects.hf.protocol import HfError, HfValidationError, TextToImageRequest
from sdgate.server.errors import DialectRoute
from sdgate.server.logs import LogOnce
from sdgate.server.model_aliases import model_header, resolve_model

log = logging.getLogger("sdgate.hf")
DIALECT = "hf"
_unknown_fields = LogOnce(log, "accepting and ignoring unknown Hugging Face field(s): %s")


class HfRoute(DialectRoute):
    """``{"error": "<message>"}``; schema errors as ``{"error": [...]}`` with 422, as the service did."""

    dialect = DIALECT
    error_body = HfError
    validation_body = HfValidationError

    @staticmethod
    def render_error(err: SdgateError) -> JSONResponse:
        return JSONResponse(
            translate.error_body(err), status_code=err.status_code, headers={"X-Error-Code": err.code}
        )

    @staticmethod
    def render_validation(errors: list[dict[str, Any]]) -> JSONResponse:
        messages = []
        for e in errors:
            loc = ".".join(str(p) for p in e.get("loc", ()) if p not in ("body", "path", "query"))
            messages.append(f"{loc or 'body'}: {e.get('msg', 'invalid')}")
        return JSONResponse({"error": messages}, status_code=422)


router = APIRouter(route_class=HfRoute, tags=["Hugging Face"])


class _AnyPathConvertor(PathConvertor):
    """Starlette's ``path`` (``.*``) stops at a newline, so ``/models/a%0Ab`` would fall through to
    ComfyUI's ``GET /models/{folder}`` and answer 405; this one takes every character, so any
    model id reaches the Hugging Face route and gets its own error shape."""

    regex = "(?s:.*)"


register_url_convertor("hf_model_id", _AnyPathConvertor())


def _log_unknown(body: TextToImageRequest) -> None:
    names = [f"parameters.{k}" for k in sorted(body.parameters.model_extra or {})]
    names += sorted(body.model_extra or {})
    _unknown_fields.names(names)


_BINARY = {"schema": {"type": "string", "format": "binary"}}
RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "the image's bytes, in the format Accept names (PNG by default)",
        "content": {"image/png": _BINARY, "image/jpeg": _BINARY, "image/webp": _BINARY},
    },
    # 404: an unknown model under strict_models; 409: the job was cancelled meanwhile; 503: the
    # server is shutting down.
    404: {},
    409: {},
    503: {},
}


@router.post("/models/{model_id:hf_model_id}", response_class=Response, responses=RESPONSES)
async def text_to_image(
    model_id: str,
    request: Request,
    services: ServicesDep,
    principal: CurrentPrincipal,
    body: Annotated[TextToImageRequest, Body()],
) -> Response:
    _log_unknown(body)
    info = resolve_model(services.catalog, services.settings, model_id, dialect=DIALECT)
    gen = translate.text_to_image_request(
        body, model=info.name, defaults=services.model_defaults(info), settings=services.settings
    )
    job = await jobflow.run_blocking(services, gen, request, dialect=DIALECT, principal=principal)
    content.refuse_filtered(job.result)  # a 400 in its shape, as the service refuses flagged output
    pngs = await jobflow.image_bytes(services, job)
    if not pngs:
        raise GenerationFailed("the job finished without an image")
    png = pngs[0]
    fmt = translate.output_format(request.headers.get("accept"))
    data = await run_in_threadpool(imaging.reencode, png, fmt, 95)
    return Response(data, media_type=f"image/{fmt}", headers=model_header(job))
