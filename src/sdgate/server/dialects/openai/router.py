"""OpenAI Images routes: ``/v1/images/{generations,edits,variations}``, ``/v1/models``, and the
signed image links that ``response_format=url`` hands out. Translate, delegate, render."""

from __future__ import annotations

import logging
import time
from typing import Annotated, Any

from fastapi import APIRouter, Body, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData, UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.formparsers import MultiPartException

from sdgate.core.errors import InvalidRequest, NotFound, SdgateError
from sdgate.core.images import decode_image_bytes
from sdgate.core.jobs import Job
from sdgate.core.models import ModelInfo
from sdgate.core.requests import GenerationRequest
from sdgate.server import content, imaging, jobflow
from sdgate.server.auth import Principal
from sdgate.server.deps import CurrentPrincipal, ServicesDep, image_limits
from sdgate.server.dialects.openai import translate
from sdgate.server.dialects.openai.protocol import (
    ImageEditParams,
    ImageGenerationRequest,
    ImagesResponse,
    ImageVariationParams,
    ModelList,
    OpenAIError,
)
from sdgate.server.errors import DialectRoute
from sdgate.server.logs import LogOnce
from sdgate.server.model_aliases import ALIASES, model_header, resolve_model
from sdgate.server.services import Services
from sdgate.server.signing import SIGNED_PATH, UrlSigner
from sdgate.server.wire import Model, inline_schema, multipart_body, validate_form

log = logging.getLogger("sdgate.openai")
DIALECT = "openai"
_unknown_fields = LogOnce(log, "accepting and ignoring unknown OpenAI field(s): %s")
OPENAI_MODELS = tuple(name for name in ALIASES if name.startswith(("dall-e", "gpt-image")))


class OpenAIRoute(DialectRoute):
    dialect = DIALECT
    error_body = OpenAIError

    @staticmethod
    def render_error(err: SdgateError) -> JSONResponse:
        status, body, headers = translate.error_body(err)
        return JSONResponse(body, status_code=status, headers=headers)

    @staticmethod
    def render_validation(errors: list[dict[str, Any]]) -> JSONResponse:
        first = errors[0] if errors else {}
        loc = [str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path")]
        field = loc[0] if loc else None
        message = f"{'.'.join(loc) or 'body'}: {first.get('msg', 'invalid')}"
        return OpenAIRoute.render_error(InvalidRequest(message, field=field))


router = APIRouter(prefix="/v1", route_class=OpenAIRoute, tags=["OpenAI"])

# A generation also answers what its job may end with: an unknown model under strict_models (404),
# a job cancelled meanwhile (409), a server shutting down (503).
_JOB_ERRORS: dict[int | str, dict[str, Any]] = {404: {}, 409: {}, 503: {}}
_IMAGE = "a PNG, JPEG or WebP image"
_EDIT_FORM = multipart_body(
    inline_schema(ImageEditParams),
    files={
        "image": f"{_IMAGE} (several: repeated image[] fields; the first is edited)",
        "mask": f"{_IMAGE} the size of image; its transparent pixels are edited",
    },
    required=("image",),
)
_VARIATION_FORM = multipart_body(
    inline_schema(ImageVariationParams), files={"image": _IMAGE}, required=("image",)
)


def _log_unknown(kind: str, body: BaseModel) -> None:
    _unknown_fields.names(f"{kind}.{f}" for f in sorted(body.model_extra or {}))


def _model(services: Services, name: str | None) -> tuple[ModelInfo, Any]:
    info = resolve_model(services.catalog, services.settings, name, dialect=DIALECT)
    return info, services.model_defaults(info)


def _signer(services: Services) -> UrlSigner:
    return services.state.setdefault(UrlSigner, lambda: UrlSigner.from_settings(services.settings))


async def _respond(
    request: Request,
    services: Services,
    job: Job,
    *,
    fmt: str,
    output_format: str | None,
    quality: int | None,
) -> dict[str, Any]:
    """``{"created", "data"}`` with base64 images or signed links, in the asked image format."""
    images = await jobflow.image_bytes(services, job)
    kind = output_format or "png"

    def encode() -> list[str]:
        out = []
        for png in images:
            data = imaging.reencode(png, kind, quality if quality is not None else 100)
            if fmt == "b64_json":
                out.append(jobflow.b64(data))
            else:
                image_id = services.images.put(data, content_type=f"image/{kind}")
                base = services.settings.public_url or str(request.base_url)
                out.append(base.rstrip("/") + _signer(services).path(image_id))
        return out

    body: dict[str, Any] = {
        "created": int(time.time()),
        "data": translate.image_items(await run_in_threadpool(encode), fmt),
    }
    if output_format:
        body["output_format"] = output_format
    return body


async def _run(
    request: Request, response: Response, services: Services, principal: Principal, gen: GenerationRequest
) -> Job:
    """The finished job; ``response`` gets ``X-Sdgate-Model`` (the body has no field for it)."""
    job = await jobflow.run_blocking(services, gen, request, dialect=DIALECT, principal=principal)
    content.refuse_filtered(job.result)  # OpenAI refuses the request (content_policy_violation)
    response.headers.update(model_header(job))
    return job


@router.post(
    "/images/generations",
    response_model=ImagesResponse,
    response_model_exclude_none=True,
    responses=_JOB_ERRORS,
)
async def generations(
    request: Request,
    response: Response,
    services: ServicesDep,
    principal: CurrentPrincipal,
    body: Annotated[ImageGenerationRequest, Body()],
) -> dict[str, Any]:
    _log_unknown("generations", body)
    info, defaults = _model(services, body.model)
    gen = translate.generation_request(body, model=info.name, defaults=defaults, settings=services.settings)
    job = await _run(request, response, services, principal, gen)
    fmt = body.response_format or translate.default_response_format(body.model)
    return await _respond(
        request, services, job, fmt=fmt, output_format=body.output_format, quality=body.output_compression
    )


@router.post(
    "/images/edits",
    response_model=ImagesResponse,
    response_model_exclude_none=True,
    responses=_JOB_ERRORS,
    openapi_extra=_EDIT_FORM,
)
async def edits(
    request: Request, response: Response, services: ServicesDep, principal: CurrentPrincipal
) -> dict[str, Any]:
    form = await _read_form(request)
    body = _validate(ImageEditParams, form)
    _log_unknown("edits", body)
    info, defaults = _model(services, body.model)
    uploads = [v for k, v in form.multi_items() if k in ("image", "image[]") and isinstance(v, UploadFile)]
    if not uploads:
        raise InvalidRequest("image: is required", field="image")
    if len(uploads) > 1:
        log.info("openai: edits got %d images; using the first (no reference-image support)", len(uploads))
    image = await uploads[0].read()
    mask = await _file(form, "mask")

    def store() -> tuple[str, str | None, tuple[int, int]]:
        limits = image_limits(services)
        rgb, image_alpha = imaging.read_upload(image, field="image", limits=limits)
        mask_image = mask_alpha = None
        if mask is not None:
            mask_image, mask_alpha = imaging.read_upload(mask, field="mask", limits=limits)
        edit = translate.edit_mask(image_alpha, mask_image, mask_alpha, rgb.size)
        mask_id = services.images.put(imaging.to_png(edit)) if edit is not None else None
        return services.images.put(imaging.to_png(rgb)), mask_id, rgb.size

    init_id, mask_id, size = await run_in_threadpool(store)
    gen = translate.edit_request(
        body,
        init_image=init_id,
        mask=mask_id,
        init_size=size,
        model=info.name,
        defaults=defaults,
        settings=services.settings,
    )
    job = await _run(request, response, services, principal, gen)
    fmt = body.response_format or translate.default_response_format(body.model)
    return await _respond(
        request, services, job, fmt=fmt, output_format=body.output_format, quality=body.output_compression
    )


@router.post(
    "/images/variations",
    response_model=ImagesResponse,
    response_model_exclude_none=True,
    responses=_JOB_ERRORS,
    openapi_extra=_VARIATION_FORM,
)
async def variations(
    request: Request, response: Response, services: ServicesDep, principal: CurrentPrincipal
) -> dict[str, Any]:
    form = await _read_form(request)
    body = _validate(ImageVariationParams, form)
    _log_unknown("variations", body)
    info, defaults = _model(services, body.model)
    image = await _file(form, "image")
    if image is None:
        raise InvalidRequest("image: is required", field="image")

    def store() -> tuple[str, tuple[int, int]]:
        rgb = decode_image_bytes(image, field="image", limits=image_limits(services))
        return services.images.put(imaging.to_png(rgb)), rgb.size

    init_id, size = await run_in_threadpool(store)
    gen = translate.variation_request(
        body,
        init_image=init_id,
        init_size=size,
        model=info.name,
        defaults=defaults,
        settings=services.settings,
    )
    job = await _run(request, response, services, principal, gen)
    fmt = body.response_format or translate.default_response_format(body.model)
    return await _respond(request, services, job, fmt=fmt, output_format=None, quality=None)


@router.get("/models", response_model=ModelList)
async def models(services: ServicesDep) -> dict[str, Any]:
    created = int(time.time())
    names = [info.name for info in services.catalog.list()] + list(OPENAI_MODELS)
    return {
        "object": "list",
        "data": [{"id": n, "object": "model", "created": created, "owned_by": "sdgate"} for n in names],
    }


@router.get(SIGNED_PATH.removeprefix("/v1") + "/{image_id}", include_in_schema=False)
async def signed_image(
    image_id: str, services: ServicesDep, expires: int = 0, signature: str = ""
) -> Response:
    """A signed link from a ``url`` response. Wrong or expired links are all the same 404."""
    if not _signer(services).verify(image_id, expires, signature):
        raise NotFound("this image link is invalid or has expired")
    data, content_type = await run_in_threadpool(
        lambda: (services.images.get(image_id), services.images.content_type(image_id))
    )  # NotFound (404) when the image is gone
    return Response(data, media_type=content_type, headers={"Cache-Control": "private, max-age=60"})


async def _read_form(request: Request) -> FormData:
    """The form; a malformed multipart body is the client's 400, in OpenAI's shape (Starlette
    raises its own ``HTTPException`` for it, which would answer FastAPI's ``{detail}``)."""
    try:
        return await request.form()
    except MultiPartException as exc:
        reason = exc.message
    except StarletteHTTPException as exc:
        reason = str(exc.detail)
    raise InvalidRequest(f"body: is not valid multipart/form-data ({reason})", field="body")


def _validate(model: type[Model], form: FormData) -> Model:
    """The text fields; one given twice is a list, which a scalar field refuses."""
    values: dict[str, list[str]] = {}
    for key, value in form.multi_items():
        if isinstance(value, str):
            values.setdefault(key, []).append(value)
    return validate_form(model, {k: v[0] if len(v) == 1 else v for k, v in values.items()})


async def _file(form: FormData, name: str) -> bytes | None:
    value = form.get(name)
    if isinstance(value, UploadFile):
        return (await value.read()) or None
    return None
