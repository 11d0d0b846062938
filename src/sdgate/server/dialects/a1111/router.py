"""``/sdapi/v1`` routes: translate, delegate, render. Nothing else lives here."""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Body, Depends, Request
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from sdgate.core import images as core_images
from sdgate.core.errors import InvalidRequest, ModelNotFound, SdgateError
from sdgate.core.infotext import parse_infotext
from sdgate.core.jobs import ControlAction, Job, JobState
from sdgate.core.models import ModelInfo
from sdgate.core.requests import ControlNetUnit, GenerationRequest, Mode
from sdgate.core.samplers import samplers_listing, schedulers_listing
from sdgate.server import jobflow
from sdgate.server.deps import CurrentPrincipal, ServicesDep, image_limits
from sdgate.server.dialects.a1111 import controlnet, outputs, system, translate
from sdgate.server.dialects.a1111 import interrogate as interrogation
from sdgate.server.dialects.a1111 import scripts as a1111_scripts
from sdgate.server.dialects.a1111.infotext_fields import with_infotext
from sdgate.server.dialects.a1111.option_schema import options_body_schema, options_response_schema
from sdgate.server.dialects.a1111.options import A1111Options, OptionsView, ignored_keys
from sdgate.server.dialects.a1111.protocol import (
    A1111Error,
    CommonProcessing,
    GenerationResponse,
    Img2ImgRequest,
    PngInfoRequest,
    PngInfoResponse,
    ProgressResponse,
    ProgressState,
    SamplerItem,
    SchedulerItem,
    SDModelItem,
    Txt2ImgRequest,
    UnprocessableBody,
    ValidationErrorBody,
)
from sdgate.server.dialects.a1111.scripts.base import Builder, ScriptContext
from sdgate.server.errors import DialectRoute, WrappedError
from sdgate.server.fetch import make_fetcher
from sdgate.server.imaging import stand_ins
from sdgate.server.logs import LogOnce
from sdgate.server.runtime import get_runtime
from sdgate.server.services import Services

log = logging.getLogger("sdgate.a1111")
DIALECT = "a1111"


class A1111Route(DialectRoute):
    """A1111 renders every error as ``{error, detail, body, errors}`` (its api_middleware); schema
    errors keep FastAPI's own 422 body."""

    dialect = DIALECT
    error_body = A1111Error
    validation_body = ValidationErrorBody

    @staticmethod
    def render_error(err: SdgateError) -> JSONResponse:
        body = {"error": type(err).__name__, "detail": err.message, "body": "", "errors": err.message}
        return JSONResponse(body, status_code=err.status_code)

    @staticmethod
    def render_validation(errors: list[dict[str, Any]]) -> JSONResponse:
        return JSONResponse({"detail": errors}, status_code=422)

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        """FastAPI's own HTTPExceptions inside a route (a body that is not text: 400 "There was an
        error parsing the body") in A1111's shape, as its middleware renders them (not through
        DialectRoute's, which makes them an InvalidRequest)."""
        handler = APIRoute.get_route_handler(self)

        async def handle(request: Request) -> Response:
            try:
                return await handler(request)
            except WrappedError:
                raise
            except StarletteHTTPException as exc:
                body = {"error": "HTTPException", "detail": exc.detail, "body": "", "errors": ""}
                return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)

        return handle


router = APIRouter(prefix="/sdapi/v1", route_class=A1111Route, tags=["AUTOMATIC1111"])
# Beyond the common ones: an unknown checkpoint, VAE, style or LoRA (404); a job interrupted or
# cancelled (409); no worker can take it (503). A 422 is a body off the schema or an unknown script.
GENERATION_ERRORS: dict[int | str, dict[str, Any]] = {
    404: {"description": "a checkpoint, style or LoRA the server does not have"},
    409: {"description": "the job was cancelled"},
    422: {"model": UnprocessableBody},
    503: {"description": "no worker can run the job"},
}


def get_options(services: Services) -> A1111Options:
    """The server's defaults (the admin's options), loaded once per process."""
    return services.state.setdefault(
        A1111Options,
        lambda: A1111Options(services.settings.data_dir / "a1111-options.json", services.catalog),
    )


def caller_options(services: ServicesDep, principal: CurrentPrincipal) -> OptionsView:
    """The options the caller reads, saves and generates with: the server's defaults for an admin
    (and on a server without credentials), else its own overrides over them (sync: a read)."""
    return get_options(services).for_principal(principal, get_runtime(services).principal_options)


# Every route that reads or saves options, or generates, takes the caller's own.
OptionsDep = Annotated[OptionsView, Depends(caller_options)]
BodyT = TypeVar("BodyT", Txt2ImgRequest, Img2ImgRequest)
# Saved options that every job reads, as A1111's global opts (e.g. a Clip skip set once).
JOB_SETTINGS = ("CLIP_stop_at_last_layers", "eta_noise_seed_delta")
_unknown_fields = LogOnce(log, "accepting and ignoring unknown field(s): %s")
_ignored_fields = LogOnce(log, "accepting and ignoring %s: %s")


def _log_unknown_fields(body: Txt2ImgRequest | Img2ImgRequest) -> None:
    _unknown_fields.names(translate.unknown_fields(body))
    for name, why in translate.ignored_fields(body):
        _ignored_fields.once(name, name, why)


def _with_infotext(services: Services, body: BodyT) -> BodyT:
    """The ``infotext`` field's values in every field the request left unset (A1111 §1.1)."""

    def known_model(name: str) -> str | None:
        try:
            return services.catalog.resolve(name).title
        except ModelNotFound:
            return None

    def known_vae(name: str) -> str | None:
        vae = services.catalog.find_vae(name)
        return vae.name if vae is not None else None

    return with_infotext(body, resolve_model=known_model, resolve_vae=known_vae)


def _checkpoint_resolver(services: Services) -> translate.CheckpointResolver:
    """Refiner and hires checkpoint names -> the catalog's names (A1111's aliases: title, name, hash)."""
    return lambda name: services.catalog.resolve(name).name


def _request_model(options: OptionsView, body: Txt2ImgRequest | Img2ImgRequest) -> ModelInfo:
    """``override_settings.sd_model_checkpoint`` for this request, else the options' checkpoint."""
    override = translate.override_value(body, "sd_model_checkpoint")
    if override:
        return options.resolve_checkpoint(override, field="override_settings.sd_model_checkpoint")
    return options.current_model()


def _with_saved_settings(options: OptionsView, body: BodyT) -> BodyT:
    """``body`` as translated: the saved options a job reads, under its own ``override_settings``
    (the echoed ``parameters`` keep the request as sent)."""
    saved = options.effective(body.override_settings)
    merged = {key: saved[key] for key in JOB_SETTINGS if saved.get(key) is not None}
    return body.model_copy(update={"override_settings": {**(body.override_settings or {}), **merged}})


async def _keep_overrides(options: OptionsView, body: CommonProcessing) -> None:
    """``override_settings_restore_afterwards: false``: the overrides become the saved options."""
    if body.override_settings and not body.override_settings_restore_afterwards:
        overrides = body.override_settings
        await run_in_threadpool(lambda: options.update(overrides, field_prefix="override_settings"))


@router.post("/txt2img", response_model=GenerationResponse, responses=GENERATION_ERRORS)
async def txt2img(
    request: Request,
    services: ServicesDep,
    options: OptionsDep,
    principal: CurrentPrincipal,
    body: Annotated[Txt2ImgRequest, Body()] = Txt2ImgRequest(),  # noqa: B008 - A1111: {} is valid
) -> dict[str, Any]:
    _log_unknown_fields(body)
    body = _with_infotext(services, body)
    script = a1111_scripts.find(body.script_name, is_img2img=False)
    model = _request_model(options, body)
    units = controlnet.parse_units(body.alwayson_scripts, services, is_img2img=False, family=model.family)
    if script is not None:
        controls = await run_in_threadpool(controlnet.store_images, services, units)
        build = _builder(services, options, controls=controls)
        ctx = ScriptContext(body, False, services.settings, services, build)
        rendered = await a1111_scripts.run_script(script, ctx, request, dialect=DIALECT, principal=principal)
        await _keep_overrides(options, body)
        return rendered
    vae = options.vae_for(body.override_settings, model)
    gen = translate.txt2img_request(
        _with_saved_settings(options, body),
        model=model.name,
        defaults=services.model_defaults(model),
        settings=services.settings,
        resolve_checkpoint=_checkpoint_resolver(services),
    )
    gen = await _with_controls(services, gen.model_copy(update={"vae": vae}), units)
    await _keep_overrides(options, body)
    job = await jobflow.run_blocking(services, gen, request, dialect=DIALECT, principal=principal)
    return await _render(services, options, job, body, model.name)


@router.post("/img2img", response_model=GenerationResponse, responses=GENERATION_ERRORS)
async def img2img(
    request: Request,
    services: ServicesDep,
    options: OptionsDep,
    principal: CurrentPrincipal,
    body: Annotated[Img2ImgRequest, Body()] = Img2ImgRequest(),  # noqa: B008 - A1111: {} is valid
) -> dict[str, Any]:
    _log_unknown_fields(body)
    body = _with_infotext(services, body)
    script = a1111_scripts.find(body.script_name, is_img2img=True)
    model = _request_model(options, body)
    defaults = services.model_defaults(model)
    vae = options.vae_for(body.override_settings, model)
    body_in = _with_saved_settings(options, body)
    inits, mask = stand_ins(len(body.init_images or ()), mask=bool(body.mask))
    # Check everything cheap before decoding or storing any image.
    translate.img2img_request(
        body_in,
        model=model.name,
        defaults=defaults,
        settings=services.settings,
        init_images=inits,
        mask=mask,
        resolve_checkpoint=_checkpoint_resolver(services),
    )
    if not body.init_images:
        raise InvalidRequest("init_images: at least one image is required", field="init_images")
    units = controlnet.parse_units(body.alwayson_scripts, services, is_img2img=True, family=model.family)
    init_ids, mask_id = await run_in_threadpool(_store_inputs, services, body)
    if script is not None:
        controls = await run_in_threadpool(controlnet.store_images, services, units)
        build = _builder(services, options, init_ids, mask_id, controls=controls)
        ctx = ScriptContext(body, True, services.settings, services, build, init_ids)
        rendered = await a1111_scripts.run_script(script, ctx, request, dialect=DIALECT, principal=principal)
        await _keep_overrides(options, body)
    else:
        gen = translate.img2img_request(
            body_in,
            model=model.name,
            defaults=defaults,
            settings=services.settings,
            init_images=init_ids,
            mask=mask_id,
            resolve_checkpoint=_checkpoint_resolver(services),
        )
        gen = await _with_controls(services, gen.model_copy(update={"vae": vae}), units)
        await _keep_overrides(options, body)
        job = await jobflow.run_blocking(services, gen, request, dialect=DIALECT, principal=principal)
        rendered = await _render(services, options, job, body, model.name)
    if not body.include_init_images:  # A1111 echoes the images only when asked to
        rendered["parameters"].update(init_images=None, mask=None)
    return rendered


async def _with_controls(
    services: Services, gen: GenerationRequest, units: list[controlnet.WireUnit]
) -> GenerationRequest:
    """``gen`` with its ControlNet units: checked as a job first (with stand-in images), then
    their images stored, so a refused request leaves nothing behind."""
    if not units:
        return gen
    await run_in_threadpool(jobflow.check_submission, services,
                            gen.model_copy(update={"controlnets": controlnet.stand_in_units(units)}))
    controls = await run_in_threadpool(controlnet.store_images, services, units)
    return gen.model_copy(update={"controlnets": controls})


def _builder(
    services: Services,
    options: OptionsView,
    init_images: tuple[str, ...] = (),
    mask: str | None = None,
    *,
    controls: tuple[ControlNetUnit, ...] = (),
) -> Builder:
    """The routes' translation of one body, for scripts: each body (a cell, a line) picks its own
    model and VAE; ``images`` (SD upscale's tiles) replace the request's init images and mask;
    every job gets the request's ControlNet units (``controls``, their images stored once)."""

    def build(
        body: Txt2ImgRequest | Img2ImgRequest, images: tuple[str, ...] | None = None
    ) -> GenerationRequest:
        model = _request_model(options, body)
        body_in = _with_saved_settings(options, body)
        common: dict[str, Any] = {
            "model": model.name,
            "defaults": services.model_defaults(model),
            "settings": services.settings,
            "resolve_checkpoint": _checkpoint_resolver(services),
        }
        if isinstance(body_in, Img2ImgRequest):
            chosen = (init_images, mask) if images is None else (images, None)
            gen = translate.img2img_request(body_in, init_images=chosen[0], mask=chosen[1], **common)
        else:
            gen = translate.txt2img_request(body_in, **common)
        vae = options.vae_for(body.override_settings, model)
        return gen.model_copy(update={"vae": vae, "controlnets": controls})

    return build


def _store_inputs(services: Services, body: Img2ImgRequest) -> tuple[tuple[str, ...], str | None]:
    """Decode and validate every image at the edge (a bad one: 4xx naming its field), then store them."""
    limits = image_limits(services)
    settings = services.settings
    decoded = []
    for i, value in enumerate(body.init_images or ()):
        field = f"init_images.{i}"
        fetch = make_fetcher(settings, field)
        decoded.append(core_images.decode_base64_image(value, field=field, limits=limits, fetch_url=fetch))
    mask = (
        core_images.decode_base64_image(
            body.mask, field="mask", limits=limits, mode="L", fetch_url=make_fetcher(settings, "mask")
        )
        if body.mask
        else None
    )
    ids = tuple(services.images.put(core_images.encode_png(img), content_type="image/png") for img in decoded)
    mask_id = services.images.put(core_images.encode_png(mask), content_type="image/png") if mask else None
    return ids, mask_id


async def _render(
    services: Services,
    options: OptionsView,
    job: Job,
    body: Txt2ImgRequest | Img2ImgRequest,
    model_name: str,
) -> dict[str, Any]:
    """The response; with ``save_images``, the files A1111 saves, and its grid first in ``images``."""
    result = job.result
    assert result is not None
    wanted = body.send_images or body.save_images
    images = await jobflow.image_bytes(services, job) if wanted else []
    saved = await run_in_threadpool(
        lambda: outputs.finish(
            services.settings.data_dir,
            job.request.mode,
            images,
            result.infotexts,
            result.seeds,
            save_images=body.save_images,
            batch_size=job.request.batch_size,
            options=options.effective(body.override_settings),
        )
    )
    if saved.grid_png is not None:
        images = [saved.grid_png, *images]
    return {
        "images": [jobflow.b64(data) for data in images] if body.send_images else [],
        "parameters": translate.parameters_echo(body),
        "info": translate.info_json(
            body,
            job.request,
            result,
            model_name=model_name,
            created_at=job.created_at,
            grid_infotext=saved.grid_infotext,
        ),
    }


def _running_job(services: Services, user: str | None) -> Job | None:
    """The oldest running A1111 job of this caller (A1111's /progress, /interrupt and /skip)."""
    running = services.store.list(states=(JobState.RUNNING,), dialect=DIALECT, owner=user, limit=100)
    return running[-1] if running else None


@router.get("/progress", response_model=ProgressResponse)
async def progress(
    services: ServicesDep, principal: CurrentPrincipal, skip_current_image: bool = False
) -> dict[str, Any]:
    job = await run_in_threadpool(_running_job, services, principal.id)
    if job is None:
        queued = await run_in_threadpool(
            lambda: services.store.list(
                states=(JobState.QUEUED,), dialect=DIALECT, owner=principal.id, limit=1
            )
        )
        state = ProgressState(job_count=1 if queued else 0)
        text = "In queue" if queued else None
        return {"progress": 0.0, "eta_relative": 0.0, "state": state, "current_image": None, "textinfo": text}
    prog = job.progress
    iteration, iterations = (prog.iteration, prog.iterations) if prog else (0, job.request.n_iter)
    step, steps = (prog.step, prog.steps) if prog else (0, job.request.steps or 0)
    fraction = translate.progress_fraction(iteration, iterations, step, steps)
    started = job.started_at or job.created_at
    elapsed = (datetime.now(UTC) - started).total_seconds()
    eta = elapsed / fraction - elapsed if fraction > 0 else 0.0
    state = ProgressState(
        job="scripts_txt2img" if job.request.mode == Mode.TXT2IMG else "scripts_img2img",
        job_count=iterations,
        job_no=iteration,
        job_timestamp=started.strftime("%Y%m%d%H%M%S"),
        sampling_step=step,
        sampling_steps=steps,
        interrupted=job.control == ControlAction.INTERRUPT,
        skipped=job.control == ControlAction.SKIP,
    )
    image = None
    if not skip_current_image:
        preview = await run_in_threadpool(services.current_preview, job.id)
        image = core_images.image_to_base64_png(preview) if preview is not None else None
    return {
        "progress": fraction,
        "eta_relative": eta,
        "state": state,
        "current_image": image,
        "textinfo": None,
    }


async def _control(services: Services, user: str | None, action: ControlAction) -> None:
    job = await run_in_threadpool(_running_job, services, user)
    if job is not None:
        await run_in_threadpool(services.store.request_control, job.id, action)


@router.post("/interrupt", response_model=dict[str, Any])
async def interrupt(services: ServicesDep, principal: CurrentPrincipal) -> dict[str, Any]:
    await _control(services, principal.id, ControlAction.INTERRUPT)
    return {}


@router.post("/skip", response_model=None)
async def skip(services: ServicesDep, principal: CurrentPrincipal) -> None:
    await _control(services, principal.id, ControlAction.SKIP)


@router.get(
    "/options",
    response_model=None,
    responses={200: {"content": {"application/json": {"schema": options_response_schema()}}}},
)
async def get_options_route(options: OptionsDep) -> dict[str, Any]:
    """The caller's options: the server's defaults under its own overrides (an admin's: the
    defaults)."""
    return await run_in_threadpool(options.snapshot)


@router.post(
    "/options",
    response_model=None,
    responses={404: {"description": "sd_model_checkpoint: no such checkpoint"}},
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": options_body_schema(ignored_keys())}},
        }
    },
)
async def set_options(options: OptionsDep, body: Annotated[dict[str, Any], Body()]) -> None:
    """An admin's (or, without credentials, anyone's) changes the server's defaults; anyone else's
    are its own overrides, which change nobody else's options or images."""
    await run_in_threadpool(options.update, body)


@router.get("/cmd-flags", response_model=dict[str, Any])
async def cmd_flags(services: ServicesDep) -> dict[str, Any]:
    return system.cmd_flags(services.settings)


@router.get("/samplers", response_model=list[SamplerItem])
async def samplers() -> list[dict[str, Any]]:
    return samplers_listing()


@router.get("/schedulers", response_model=list[SchedulerItem])
async def schedulers() -> list[dict[str, Any]]:
    return schedulers_listing()


@router.get("/sd-models", response_model=list[SDModelItem])
async def sd_models(services: ServicesDep) -> list[dict[str, Any]]:
    return [translate.sd_model_item(info) for info in services.catalog.list()]


@router.post("/refresh-checkpoints", response_model=None)
async def refresh_checkpoints(services: ServicesDep) -> None:
    await run_in_threadpool(services.catalog.refresh)


@router.post(
    "/interrogate",
    response_model=interrogation.InterrogateResponse,
    responses={404: {"description": "no image, or a model other than clip and deepdanbooru"}},
)
async def interrogate(
    services: ServicesDep, options: OptionsDep, body: interrogation.InterrogateRequest
) -> dict[str, Any]:
    return await run_in_threadpool(lambda: interrogation.interrogate(services, options.current_model(), body))


@router.post("/png-info", response_model=PngInfoResponse)
async def png_info(services: ServicesDep, body: PngInfoRequest) -> dict[str, Any]:
    def read() -> dict[str, Any]:
        data = core_images.decode_base64_bytes(body.image, field="image", limits=image_limits(services))
        info, items = core_images.read_png_info(data)
        return {"info": info, "items": items, "parameters": parse_infotext(info)}

    return await run_in_threadpool(read)


@router.get("/memory", response_model=dict[str, Any])
async def memory(services: ServicesDep) -> dict[str, Any]:
    return await run_in_threadpool(system.memory, services.engine)


@router.get("/scripts", response_model=dict[str, list[str]])
async def scripts() -> dict[str, list[str]]:
    # Only what runs: webuiapi injects arguments for some names it finds here.
    return a1111_scripts.listing()


@router.get("/script-info", response_model=list[dict[str, Any]])
async def script_info() -> list[dict[str, Any]]:
    return a1111_scripts.script_info()
