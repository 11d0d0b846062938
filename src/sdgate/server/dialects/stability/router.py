"""Stability routes: v1 ``/v1/generation/...``, ``/v1/engines/list``, ``/v1/user/...`` and v2beta
``/v2beta/stable-image/generate/{core,sd3,ultra}``. Translate, delegate, render."""

from __future__ import annotations

import logging
from typing import Annotated, Any

from fastapi import APIRouter, Body, Path, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData, UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.formparsers import MultiPartException

from sdgate.core.errors import GenerationFailed, InvalidRequest, NotFound, SdgateError
from sdgate.core.images import decode_image_bytes
from sdgate.core.models import ModelInfo
from sdgate.core.requests import ControlNetUnit, GenerationRequest
from sdgate.server import imaging, jobflow
from sdgate.server.admission import usage_report
from sdgate.server.auth import Principal
from sdgate.server.deps import CurrentPrincipal, ServicesDep, image_limits
from sdgate.server.dialects.stability import translate
from sdgate.server.dialects.stability.protocol import (
    ArtifactsResponse,
    ControlParams,
    Engine,
    ImageToImageParams,
    MaskingParams,
    StableImageJson,
    StableImageParams,
    TextToImageRequest,
    UpscaleParams,
    V1Error,
    V2Error,
)
from sdgate.server.errors import DialectRoute
from sdgate.server.logs import LogOnce
from sdgate.server.middleware import request_id_var
from sdgate.server.model_aliases import ALIASES, model_header, resolve_model
from sdgate.server.services import Services
from sdgate.server.validation import controlnet_family
from sdgate.server.wire import NO_NUL, inline_schema, multipart_body, validate_form

log = logging.getLogger("sdgate.stability")
DIALECT = "stability"
_unknown_fields = LogOnce(log, "accepting and ignoring unknown Stability field(s): %s")


class StabilityV1Route(DialectRoute):
    """v1 errors: ``{id, name, message}``."""

    dialect = DIALECT
    error_body = V1Error

    @staticmethod
    def render_error(err: SdgateError) -> JSONResponse:
        status, name = translate.v1_error(err)
        return JSONResponse(
            {"id": request_id_var.get(), "name": name, "message": err.message}, status_code=status
        )

    @staticmethod
    def render_validation(errors: list[dict[str, Any]]) -> JSONResponse:
        field, message = translate.validation_message(errors)
        return StabilityV1Route.render_error(InvalidRequest(message, field=field))


class StabilityV2Route(DialectRoute):
    """v2beta errors: ``{id, name, errors: [...]}``."""

    dialect = DIALECT
    error_body = V2Error

    @staticmethod
    def render_error(err: SdgateError) -> JSONResponse:
        status, name = translate.v2_error(err)
        return JSONResponse(
            {"id": request_id_var.get(), "name": name, "errors": [err.message]}, status_code=status
        )

    @staticmethod
    def render_validation(errors: list[dict[str, Any]]) -> JSONResponse:
        field, message = translate.validation_message(errors)
        return StabilityV2Route.render_error(InvalidRequest(message, field=field))


router = APIRouter(prefix="/v1", route_class=StabilityV1Route, tags=["Stability"])
v2_router = APIRouter(prefix="/v2beta/stable-image", route_class=StabilityV2Route, tags=["Stability"])

_BINARY = {"schema": {"type": "string", "format": "binary"}}
# A generation also answers what its job may end with: an unknown engine under strict_models (404),
# a job cancelled meanwhile (409), a server shutting down (503).
_JOB_ERRORS: dict[int | str, dict[str, Any]] = {404: {}, 409: {}, 503: {}}
V1_GENERATION: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "JSON artifacts, or with `Accept: image/png` the PNG of the one image "
        "(headers `Finish-Reason`, `Seed`)",
        "content": {"image/png": _BINARY},
    },
    **_JOB_ERRORS,
}
_PROMPT_FIELDS = {
    "text_prompts[0][text]": {
        "type": "string", "maxLength": 2000, "pattern": NO_NUL, "description": "prompt 0"
    },
    "text_prompts[0][weight]": {
        "type": "number",
        "minimum": -10,
        "maximum": 10,
        "description": "prompt 0's weight (negative: a negative prompt); more prompts as "
        "text_prompts[1][text], ...; text_prompts may also be one JSON array",
    },
}
_IMAGE = "a PNG, JPEG or WebP image"


def _v1_form(model: type[Any], files: dict[str, str]) -> dict[str, Any]:
    fields = dict(inline_schema(model))
    prompts = "text_prompts" in fields.get("required", ())
    fields["properties"] = {**_PROMPT_FIELDS, **fields["properties"]}
    extra = multipart_body(
        fields,
        files=files,
        required=("text_prompts[0][text]", *(("init_image",) if "init_image" in files else ())) if prompts
        else ("image",),
        drop=("text_prompts", "extras"),  # extras: an object, which only JSON bodies carry
    )
    return extra


def _log_unknown(kind: str, body: Any) -> None:
    _unknown_fields.names(f"{kind}.{f}" for f in translate.unknown_fields(body))


def _model(services: Services, name: str) -> tuple[ModelInfo, Any]:
    info = resolve_model(services.catalog, services.settings, name, dialect=DIALECT)
    return info, services.model_defaults(info)


def _wants_image(request: Request) -> bool:
    """v1: ``image/png`` (or ``image/*``) means bytes; JSON is the default."""
    accept = request.headers.get("accept", "").lower()
    return "application/json" not in accept and ("image/png" in accept or "image/*" in accept)


async def _run_v1(
    request: Request, services: Services, principal: Principal, gen: GenerationRequest
) -> Response:
    as_image = _wants_image(request)
    if as_image and gen.image_count > 1:
        raise InvalidRequest("samples: image/png responses hold one image; ask for JSON", field="samples")
    job = await jobflow.run_blocking(services, gen, request, dialect=DIALECT, principal=principal)
    assert job.result is not None
    images = await jobflow.image_bytes(services, job)
    seeds = job.result.seeds
    response = _render_v1(as_image, images, seeds, translate.finish_reasons(job.result))
    response.headers.update(model_header(job))
    return response


def _render_v1(as_image: bool, images: list[bytes], seeds: list[int], reasons: list[str]) -> Response:
    if not images:  # every image skipped or interrupted away
        raise GenerationFailed("the job finished without an image")
    if as_image:
        headers = {"Finish-Reason": reasons[0], "Seed": str(seeds[0] if seeds else 0)}
        return Response(images[0], media_type="image/png", headers=headers)
    artifacts = [
        {"base64": jobflow.b64(data), "seed": seed, "finishReason": reason}
        for data, seed, reason in zip(images, seeds, reasons, strict=False)
    ]
    return JSONResponse({"artifacts": artifacts})


async def _read_form(request: Request) -> FormData:
    """The form; a malformed multipart body is the client's 400, in this dialect's shape (Starlette
    raises its own ``HTTPException`` for it, which would answer FastAPI's ``{detail}``)."""
    try:
        return await request.form()
    except MultiPartException as exc:
        reason = exc.message
    except StarletteHTTPException as exc:
        reason = str(exc.detail)
    raise InvalidRequest(f"body: is not valid multipart/form-data ({reason})", field="body")


async def _file(form: FormData, name: str, *, required: bool = True) -> bytes | None:
    value = form.get(name)
    if isinstance(value, UploadFile):
        data = await value.read()
        if data:
            return data
    if required:
        raise InvalidRequest(f"{name}: is required", field=name)
    return None


def _text_items(form: FormData) -> list[tuple[str, str]]:
    return [(k, v) for k, v in form.multi_items() if isinstance(v, str)]


# -- v1 -------------------------------------------------------------------------------------------


@router.get("/engines/list", response_model=list[Engine])
async def engines_list(services: ServicesDep) -> list[dict[str, Any]]:
    default = services.catalog.default.name
    engines = [
        {
            "id": name,
            "name": name,
            "type": "PICTURE",
            "description": f"Stability engine id, served by sdgate with {default} or a model of its family",
        }
        for name in ALIASES
        if name.startswith(("stable-", "esrgan"))
    ]
    engines += [
        {"id": info.name, "name": info.name, "type": "PICTURE", "description": f"sdgate model {info.title}"}
        for info in services.catalog.list()
    ]
    return engines


# What /user/balance reports for a key without an images-per-day limit: self-hosted, nothing is billed.
UNLIMITED_CREDITS = 1_000_000.0


@router.get("/user/account")
async def user_account(principal: CurrentPrincipal) -> dict[str, Any]:
    """The caller's API key as Stability's account (its fields only, as its clients parse them):
    ``id`` from the key's id (else the Basic user), ``email`` from its name. Its limits and what is
    left of them: ``/v1/user/balance`` and the native ``GET /api/v1/me``."""
    name = principal.name or principal.id or "local"
    org = {"id": "org-sdgate", "name": "sdgate", "role": "OWNER", "is_default": True}
    return {
        "id": f"user-{principal.id or name}",
        "email": f"{name}@sdgate.local",
        "profile_picture": "",
        "organizations": [org],
    }


@router.get("/user/balance")
async def user_balance(services: ServicesDep, principal: CurrentPrincipal) -> dict[str, float]:
    """``credits``: the images the caller's key may still make today (UTC), one credit an image;
    ``UNLIMITED_CREDITS`` without an images-per-day limit."""
    left = (await run_in_threadpool(usage_report, services, principal)).images_left
    return {"credits": UNLIMITED_CREDITS if left is None else float(left)}


@router.post(
    "/generation/{engine_id}/text-to-image", response_model=ArtifactsResponse, responses=V1_GENERATION
)
async def text_to_image(
    engine_id: str,
    request: Request,
    services: ServicesDep,
    principal: CurrentPrincipal,
    body: Annotated[TextToImageRequest, Body()],
) -> Response:
    _log_unknown("text-to-image", body)
    info, defaults = _model(services, engine_id)
    gen = translate.text_to_image_request(
        body, model=info.name, defaults=defaults, settings=services.settings
    )
    return await _run_v1(request, services, principal, gen)


@router.post(
    "/generation/{engine_id}/image-to-image",
    response_model=ArtifactsResponse,
    responses=V1_GENERATION,
    openapi_extra=_v1_form(ImageToImageParams, {"init_image": _IMAGE}),
)
async def image_to_image(
    engine_id: str, request: Request, services: ServicesDep, principal: CurrentPrincipal
) -> Response:
    form = await _read_form(request)
    body = validate_form(ImageToImageParams, translate.form_fields(_text_items(form)))
    _log_unknown("image-to-image", body)
    info, defaults = _model(services, engine_id)
    init_id, init_size, _ = await _store_init(services, await _file(form, "init_image"))
    gen = translate.image_to_image_request(
        body,
        init_image=init_id,
        init_size=init_size,
        model=info.name,
        defaults=defaults,
        settings=services.settings,
    )
    return await _run_v1(request, services, principal, gen)


@router.post(
    "/generation/{engine_id}/image-to-image/masking",
    response_model=ArtifactsResponse,
    responses=V1_GENERATION,
    openapi_extra=_v1_form(
        MaskingParams,
        {"init_image": _IMAGE, "mask_image": f"{_IMAGE}, the size of init_image; required by MASK_IMAGE_*"},
    ),
)
async def masking(
    engine_id: str, request: Request, services: ServicesDep, principal: CurrentPrincipal
) -> Response:
    form = await _read_form(request)
    body = validate_form(MaskingParams, translate.form_fields(_text_items(form)))
    _log_unknown("masking", body)
    info, defaults = _model(services, engine_id)
    init_id, init_size, alpha = await _store_init(services, await _file(form, "init_image"))
    mask_data = await _file(form, "mask_image", required=False)

    def store_mask() -> str:
        mask_image = None
        if mask_data is not None:
            mask_image = decode_image_bytes(
                mask_data, field="mask_image", limits=image_limits(services), mode="L"
            )
        mask = translate.mask_from_source(
            body.mask_source, init_alpha=alpha, mask_image=mask_image, init_size=init_size
        )
        return services.images.put(imaging.to_png(mask))

    mask_id = await run_in_threadpool(store_mask)
    gen = translate.masking_request(
        body,
        init_image=init_id,
        mask=mask_id,
        init_size=init_size,
        model=info.name,
        defaults=defaults,
        settings=services.settings,
    )
    return await _run_v1(request, services, principal, gen)


@router.post(
    "/generation/{engine_id}/image-to-image/upscale",
    response_model=ArtifactsResponse,
    responses=V1_GENERATION,
    openapi_extra=_v1_form(UpscaleParams, {"image": _IMAGE}),
)
async def upscale(
    engine_id: str, request: Request, services: ServicesDep, principal: CurrentPrincipal
) -> Response:
    form = await _read_form(request)
    body = validate_form(UpscaleParams, translate.form_fields(_text_items(form)))
    _log_unknown("upscale", body)
    data = await _file(form, "image")
    assert data is not None
    if engine_id.startswith("esrgan"):
        # No ESRGAN weights ship with sdgate: a Lanczos resize, said so in the log, not a silent swap.
        def resized() -> bytes:
            image, _ = imaging.read_upload(data, field="image", limits=image_limits(services))
            size = translate.upscale_size(image.size, body.width, body.height)
            return imaging.to_png(imaging.resize(image, size))

        log.info("stability: %s upscale served as a Lanczos resize (no ESRGAN model installed)", engine_id)
        image = await run_in_threadpool(resized)
        return _render_v1(_wants_image(request), [image], [0], [translate.FINISH_SUCCESS])
    info, defaults = _model(services, engine_id)
    init_id, init_size, _ = await _store_init(services, data, field="image")
    size = translate.upscale_size(init_size, body.width, body.height)
    gen = translate.latent_upscale_request(
        body, init_image=init_id, size=size, model=info.name, defaults=defaults, settings=services.settings
    )
    return await _run_v1(request, services, principal, gen)


async def _store_init(
    services: Services, data: bytes | None, *, field: str = "init_image"
) -> tuple[str, tuple[int, int], Any]:
    """(image-store id of the flattened RGB init image, its size, its alpha channel or None)."""
    assert data is not None

    def store() -> tuple[str, tuple[int, int], Any]:
        limits = image_limits(services)
        rgb, alpha = imaging.read_upload(data, field=field, limits=limits)
        return services.images.put(imaging.to_png(rgb)), rgb.size, alpha

    return await run_in_threadpool(store)


# -- v2beta ---------------------------------------------------------------------------------------


V2_SERVICES = ("core", "sd3", "ultra")


def _v2_form() -> dict[str, Any]:
    """An image needs a strength; sd3's ``mode: image-to-image`` needs an image (core has neither
    field and ignores them, as the service ignores fields it does not know)."""
    return multipart_body(
        inline_schema(StableImageParams),
        files={"image": f"{_IMAGE} (ultra and sd3 image-to-image; needs strength), each side at least 64 px"},
    )
V2_GENERATION: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "the image in output_format (headers `finish-reason`, `seed`), or with "
        "`Accept: application/json` a JSON object",
        "content": {
            "image/png": _BINARY,
            "image/jpeg": _BINARY,
            "image/webp": _BINARY,
            "application/json": {"schema": StableImageJson.model_json_schema()},
        },
    },
    **_JOB_ERRORS,
}


@v2_router.post(
    "/generate/{service}",
    responses=V2_GENERATION,
    openapi_extra=_v2_form(),
)
async def generate(
    service: Annotated[str, Path(json_schema_extra={"enum": list(V2_SERVICES)})],
    request: Request,
    services: ServicesDep,
    principal: CurrentPrincipal,
) -> Response:
    if service not in V2_SERVICES:
        raise NotFound(f"generate/{service}: no such service; use core, sd3 or ultra")
    form = await _read_form(request)
    body = validate_form(StableImageParams, translate.form_fields(_text_items(form)))
    _log_unknown(f"generate/{service}", body)
    info, defaults = _model(services, body.model or service)
    image = await _file(form, "image", required=False)
    if image is not None and service == "core":
        log.info("stability: generate/core takes no image; ignoring it, as the service does")
        image = None
    init_id, init_size = None, None
    if image is not None:
        init_id, init_size, _ = await _store_init(services, image, field="image")
    gen = translate.stable_image_request(
        service,
        body,
        model=info.name,
        defaults=defaults,
        settings=services.settings,
        init_image=init_id,
        init_size=init_size,
    )
    return await _run_v2(request, services, principal, gen, body.output_format.value)


async def _run_v2(
    request: Request, services: Services, principal: Principal, gen: GenerationRequest, fmt: str
) -> Response:
    """Run ``gen`` and answer as v2beta does: the image in ``fmt``, or JSON per ``Accept``."""
    job = await jobflow.run_blocking(services, gen, request, dialect=DIALECT, principal=principal)
    assert job.result is not None
    pngs = await jobflow.image_bytes(services, job)
    if not pngs:
        raise GenerationFailed("the job finished without an image")
    png = pngs[0]
    data = await run_in_threadpool(imaging.reencode, png, fmt)
    seed = job.result.seeds[0] if job.result.seeds else gen.seed
    reason = translate.finish_reasons(job.result)[0]
    if "application/json" in request.headers.get("accept", "").lower():
        return JSONResponse(
            {"image": jobflow.b64(data), "finish_reason": reason, "seed": seed},
            headers=model_header(job),
        )
    headers = {"finish-reason": reason, "seed": str(seed), **model_header(job)}
    return Response(data, media_type=f"image/{fmt}", headers=headers)


# -- v2beta control -------------------------------------------------------------------------------

CONTROL_SERVICES = tuple(translate.CONTROL_KINDS)


@v2_router.post(
    "/control/{service}",
    responses=V2_GENERATION,
    openapi_extra=multipart_body(
        inline_schema(ControlParams), files={"image": f"{_IMAGE}: the sketch or the structure to follow"},
        required=("image",),
    ),
)
async def control(
    service: Annotated[str, Path(json_schema_extra={"enum": list(CONTROL_SERVICES)})],
    request: Request,
    services: ServicesDep,
    principal: CurrentPrincipal,
) -> Response:
    """control/sketch and control/structure: text-to-image guided by the image through an
    installed ControlNet (a sketch inverted into a scribble map, a structure's canny edges)."""
    if service not in CONTROL_SERVICES:
        raise NotFound(f"control/{service}: no such service; use sketch or structure")
    form = await _read_form(request)
    body = validate_form(ControlParams, translate.form_fields(_text_items(form)))
    _log_unknown(f"control/{service}", body)
    info, defaults = _model(services, "")
    controlnet = _control_model(services, service, info)
    data = await _file(form, "image")
    assert data is not None

    def store() -> tuple[str, tuple[int, int], str]:
        rgb, _ = imaging.read_upload(data, field="image", limits=image_limits(services))
        module = translate.sketch_module(rgb) if service == "sketch" else "canny"
        return services.images.put(imaging.to_png(rgb)), rgb.size, module

    image_id, size, module = await run_in_threadpool(store)
    unit = ControlNetUnit(model=controlnet, image=image_id, module=module, weight=body.control_strength)
    gen = translate.control_request(
        body, control=unit, image_size_px=size, model=info.name, defaults=defaults,
        settings=services.settings,
    )
    return await _run_v2(request, services, principal, gen, body.output_format.value)


def _control_model(services: Services, service: str, model: ModelInfo) -> str:
    """The installed ControlNet ``service`` runs with on ``model`` (one of its family where that is
    known), or a 404 saying what to install."""
    fitting = [
        f.name for f in services.catalog.list_files("controlnet")
        if model.family is None or controlnet_family(f.path) in (None, model.family)
    ]
    name = translate.pick_controlnet(service, fitting)
    if name is None:
        words = " or ".join(repr(w) for w in translate.CONTROL_KINDS[service])
        raise NotFound(
            f"control/{service}: no ControlNet installed for it: put one whose name says {words} "
            f"(for {model.family or 'the'} models) in the models folder's ControlNet/",
            field="model",
        )
    return name
