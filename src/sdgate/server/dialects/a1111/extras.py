"""A1111's extras (upscaling) routes and its remaining listings and controls.

``/extra-single-image`` and ``/extra-batch-images`` are checked and their pictures stored here,
then run as one job (a ``PostprocessRequest``) on a worker: the upscalers of ``engine.upscalers``
and then, as A1111 1.x orders them, GFPGAN and CodeFormer (``engine.restorers``: the whole picture,
no face detector; see there), by ``engine.extras``. The route waits for the job and answers with its
pictures; an API-only process queues the job for a worker elsewhere. Nothing here imports torch:
the listings read the models folder live (a file's scale from its name, or the one a worker
recorded when it loaded it), so the refresh routes have nothing to do.
"""

from __future__ import annotations

import logging
import os
import signal
from typing import Any

from fastapi import APIRouter, BackgroundTasks, Request
from starlette.concurrency import run_in_threadpool

from sdgate.core import images as core_images
from sdgate.core import restorers
from sdgate.core.errors import InvalidRequest, NotFound
from sdgate.core.requests import FacePass, PostprocessRequest
from sdgate.core.upscaler_files import scale_hint, scales_for, upscaler_listing
from sdgate.core.upscalers import LATENT_UPSCALE_MODES, check_upscaler
from sdgate.server import jobflow
from sdgate.server.auth import Principal
from sdgate.server.deps import CurrentPrincipal, ServicesDep, image_limits
from sdgate.server.dialects.a1111.protocol import (
    ExtrasBase,
    ExtrasBatchImagesRequest,
    ExtrasBatchImagesResponse,
    ExtrasSingleImageRequest,
    ExtrasSingleImageResponse,
)
from sdgate.server.dialects.a1111.router import A1111Route
from sdgate.server.services import Services

log = logging.getLogger("sdgate.a1111")

router = APIRouter(prefix="/sdapi/v1", route_class=A1111Route, tags=["AUTOMATIC1111"])

MAX_SCALE = 8.0
# The jobs of these routes: not A1111 generations, so ``/progress``, ``/interrupt`` and ``/skip``
# (which follow the ``a1111`` dialect's jobs) leave them alone, as A1111's do.
EXTRAS_DIALECT = "a1111-extras"


def _check_scale(body: ExtrasBase) -> None:
    if body.resize_mode == 0 and not 0 < body.upscaling_resize <= MAX_SCALE:
        raise InvalidRequest(f"upscaling_resize must be in (0, {MAX_SCALE}]", field="upscaling_resize")
    if body.resize_mode not in (0, 1):
        raise InvalidRequest("resize_mode must be 0 (scale) or 1 (to size)", field="resize_mode")


def _face_passes(body: ExtrasBase, services: Services) -> tuple[FacePass, ...]:
    """GFPGAN then CodeFormer (A1111's order) where asked; a 400 naming the field when one is not
    installed."""
    files = services.catalog.list_files("face_restorers")
    passes = []
    for field, name, visibility in (
        ("gfpgan_visibility", "GFPGAN", body.gfpgan_visibility),
        ("codeformer_visibility", "CodeFormer", body.codeformer_visibility),
    ):
        if not 0.0 <= visibility <= 1.0:
            raise InvalidRequest(f"{field} must be between 0 and 1", field=field)
        if visibility > 0:
            restorer = restorers.choose(files, name, field=field)
            passes.append(FacePass(restorer=restorer, visibility=visibility, field=field))
    return tuple(passes)


def _check(body: ExtrasBase, services: Services) -> None:
    if not 0.0 <= body.extras_upscaler_2_visibility <= 1.0:
        raise InvalidRequest(
            "extras_upscaler_2_visibility must be between 0 and 1", field="extras_upscaler_2_visibility"
        )
    if body.resize_mode == 1:
        for field, value in (
            ("upscaling_resize_w", body.upscaling_resize_w),
            ("upscaling_resize_h", body.upscaling_resize_h),
        ):
            if not 0 < value <= services.settings.max_side:
                raise InvalidRequest(f"{field} must be in 1..{services.settings.max_side}", field=field)


def _postprocess_request(
    services: Services, body: ExtrasBase, encoded: list[tuple[str, str]]
) -> PostprocessRequest:
    """Check ``body`` and its pictures (``(base64, field)`` pairs) as A1111's extras would be run,
    and store the pictures: a 400 naming the field before any job exists."""
    _check(body, services)
    faces = _face_passes(body, services)
    request = PostprocessRequest(
        resize_mode=body.resize_mode,
        scale=body.upscaling_resize,
        width=body.upscaling_resize_w,
        height=body.upscaling_resize_h,
        crop=body.upscaling_crop,
        upscaler_1=body.upscaler_1,
        upscaler_2=body.upscaler_2,
        upscaler_2_visibility=body.extras_upscaler_2_visibility,
        faces=faces,
        codeformer_weight=body.codeformer_weight,
    )
    limits, settings = image_limits(services), services.settings
    pictures = []
    for value, field in encoded:
        image = core_images.decode_base64_image(value, field=field, limits=limits)
        _check_scale(body)
        w, h = request.target_size(image.width, image.height)
        if w * h > settings.max_pixels * 4 or max(w, h) > 4 * settings.max_side:
            raise InvalidRequest(f"the upscaled image ({w}x{h}) would be too large", field="upscaling_resize")
        pictures.append(image)
    check_upscaler(body.upscaler_1, services.catalog, field="upscaler_1", latent=False)
    if request.second_upscaler is not None:
        check_upscaler(request.second_upscaler, services.catalog, field="upscaler_2", latent=False)
    ids = tuple(services.images.put(core_images.encode_png(p), content_type="image/png") for p in pictures)
    return request.model_copy(update={"init_images": ids})


async def _run(
    services: Services,
    http_request: Request,
    principal: Principal,
    body: ExtrasBase,
    encoded: list[tuple[str, str]],
) -> list[str]:
    """The pictures of ``encoded`` through ``body``'s extras, on a worker, as base64 PNGs."""
    if not encoded:
        return []
    request = await run_in_threadpool(_postprocess_request, services, body, encoded)
    return [jobflow.b64(data) for data in await run_postprocess(services, request, http_request, principal)]


async def run_postprocess(
    services: Services, request: PostprocessRequest, http_request: Request, principal: Principal
) -> list[bytes]:
    """``request`` as ``principal``'s extras job on a worker, waited for: its pictures' PNGs (the
    extras routes, and the SD upscale script's model upscaler)."""
    job = await jobflow.run_blocking(
        services, request, http_request, dialect=EXTRAS_DIALECT, principal=principal
    )
    return await jobflow.image_bytes(services, job)


@router.post("/extra-single-image", response_model=ExtrasSingleImageResponse)
async def extra_single_image(
    request: Request, services: ServicesDep, principal: CurrentPrincipal, body: ExtrasSingleImageRequest
) -> dict[str, Any]:
    images = await _run(services, request, principal, body, [(body.image, "image")])
    return {"html_info": "", "image": images[0] if images else ""}


@router.post("/extra-batch-images", response_model=ExtrasBatchImagesResponse)
async def extra_batch_images(
    request: Request, services: ServicesDep, principal: CurrentPrincipal, body: ExtrasBatchImagesRequest
) -> dict[str, Any]:
    if len(body.imageList) > services.settings.max_batch_images:
        raise InvalidRequest(
            f"imageList: at most {services.settings.max_batch_images} images", field="imageList"
        )
    encoded = [(item.data, f"imageList.{i}.data") for i, item in enumerate(body.imageList)]
    return {"html_info": "", "images": await _run(services, request, principal, body, encoded)}


@router.get("/upscalers", response_model=list[dict[str, Any]])
async def upscalers(services: ServicesDep) -> list[dict[str, Any]]:
    files = await run_in_threadpool(services.catalog.list_files, "esrgan")
    return upscaler_listing(files, scales_for(services.settings.data_dir))


@router.get("/latent-upscale-modes", response_model=list[dict[str, str]])
async def latent_upscale_modes() -> list[dict[str, str]]:
    return [{"name": name} for name in LATENT_UPSCALE_MODES]


@router.get("/sd-vae", response_model=list[dict[str, str]])
async def sd_vae(services: ServicesDep) -> list[dict[str, str]]:
    files = await run_in_threadpool(services.catalog.vaes)
    return [{"model_name": f.name, "filename": str(f.path)} for f in files]  # A1111: the file name


@router.post("/refresh-vae", response_model=None)
async def refresh_vae() -> None:
    return None  # the listing is read live


@router.get("/face-restorers", response_model=list[dict[str, Any]])
async def face_restorers(services: ServicesDep) -> list[dict[str, Any]]:
    files = await run_in_threadpool(services.catalog.list_files, "face_restorers")
    return restorers.listing(files)


@router.get("/hypernetworks", response_model=list[dict[str, Any]])
async def hypernetworks() -> list[dict[str, Any]]:
    return []


@router.get("/realesrgan-models", response_model=list[dict[str, Any]])
async def realesrgan_models(services: ServicesDep) -> list[dict[str, Any]]:
    files = await run_in_threadpool(services.catalog.list_files, "esrgan")
    root = services.settings.resolved_models_dir / "RealESRGAN"
    found = [f for f in files if root in f.path.parents or (root.resolve() in f.path.parents)]
    return [{"name": f.name, "path": str(f.path), "scale": scale_hint(f.name)} for f in found]


@router.post("/unload-checkpoint", response_model=None)
async def unload_checkpoint(services: ServicesDep) -> None:
    if services.engine is not None:  # None: this process only serves, the workers run elsewhere
        await run_in_threadpool(services.engine.unload)


@router.post("/reload-checkpoint", response_model=None)
async def reload_checkpoint() -> None:
    return None  # models load on their first job


@router.post(
    "/server-stop",
    response_model=str,
    responses={404: {"description": "server-stop is not enabled on this server"}},
)
async def server_stop(services: ServicesDep, background: BackgroundTasks) -> str:
    if not services.settings.enable_server_stop:
        raise NotFound("server-stop is disabled on this server (start it with enable_server_stop)")
    log.warning("stopping: /sdapi/v1/server-stop was called")
    background.add_task(os.kill, os.getpid(), signal.SIGTERM)
    return "Stopping."
