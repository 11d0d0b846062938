"""A1111's extras (upscaling) routes and its remaining listings and controls.

``/extra-single-image`` and ``/extra-batch-images`` run the upscalers of ``engine.upscalers`` and
then, as A1111 1.x orders them, GFPGAN and CodeFormer (``engine.restorers``: the whole picture, no
face detector; see there) in this process; the listings read the models folder live (without
torch), so the refresh routes have nothing to do.
"""

from __future__ import annotations

import logging
import os
import signal
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, BackgroundTasks
from starlette.concurrency import run_in_threadpool

from sdgate.core import images as core_images
from sdgate.core import restorers
from sdgate.core.errors import InvalidRequest, NotFound
from sdgate.core.upscalers import LATENT_UPSCALE_MODES
from sdgate.server.deps import ServicesDep, image_limits
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


@dataclass(frozen=True)
class _LoadedUpscalers:
    files: tuple[str, ...]  # the model files they were built from: a new file builds them again
    upscalers: Any


def get_upscalers(services: Services) -> Any:
    from sdgate.engine.devices import resolve_device
    from sdgate.engine.upscalers import Upscalers

    files = services.catalog.list_files("esrgan")
    key = tuple(str(f.path) for f in files)
    cached = services.state.find(_LoadedUpscalers)
    if cached is None or cached.files != key:
        device = (
            resolve_device(services.settings.device) if services.settings.engine == "diffusers" else "cpu"
        )
        cached = _LoadedUpscalers(key, Upscalers(files, device))
        services.state.put(cached)
    return cached.upscalers


def get_face_restorers(services: Services) -> Any:
    from sdgate.engine.devices import resolve_device
    from sdgate.engine.restorers import face_restorers

    settings = services.settings
    return face_restorers(
        services.catalog, resolve_device(settings.device) if settings.engine == "diffusers" else "cpu"
    )


def _target_size(body: ExtrasBase, width: int, height: int) -> tuple[int, int]:
    if body.resize_mode == 1:
        w, h = body.upscaling_resize_w, body.upscaling_resize_h
    elif body.resize_mode == 0:
        if not 0 < body.upscaling_resize <= MAX_SCALE:
            raise InvalidRequest(f"upscaling_resize must be in (0, {MAX_SCALE}]", field="upscaling_resize")
        w, h = round(width * body.upscaling_resize), round(height * body.upscaling_resize)
    else:
        raise InvalidRequest("resize_mode must be 0 (scale) or 1 (to size)", field="resize_mode")
    return w, h


def _face_passes(body: ExtrasBase, services: Services) -> list[tuple[str, str, float]]:
    """(field, restorer, visibility) in A1111's order; a 400 naming the field when one is not installed."""
    files = services.catalog.list_files("face_restorers")
    passes = []
    for field, name, visibility in (
        ("gfpgan_visibility", "GFPGAN", body.gfpgan_visibility),
        ("codeformer_visibility", "CodeFormer", body.codeformer_visibility),
    ):
        if not 0.0 <= visibility <= 1.0:
            raise InvalidRequest(f"{field} must be between 0 and 1", field=field)
        if visibility > 0:
            passes.append((field, restorers.choose(files, name, field=field), visibility))
    return passes


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


def _process(services: Services, body: ExtrasBase, encoded: str, field: str) -> str:
    from PIL import Image

    _check(body, services)
    faces = _face_passes(body, services)
    image = core_images.decode_base64_image(encoded, field=field, limits=image_limits(services))
    w, h = _target_size(body, image.width, image.height)
    if w * h > services.settings.max_pixels * 4 or max(w, h) > 4 * services.settings.max_side:
        raise InvalidRequest(f"the upscaled image ({w}x{h}) would be too large", field="upscaling_resize")
    upscalers = get_upscalers(services)
    crop = body.resize_mode == 1 and body.upscaling_crop
    scale = max(w / image.width, h / image.height) if crop else None
    inner = (round(image.width * scale), round(image.height * scale)) if scale else (w, h)
    out = upscalers.upscale(image, body.upscaler_1, *inner, field="upscaler_1")
    if body.upscaler_2 not in ("None", "") and body.extras_upscaler_2_visibility > 0:
        second = upscalers.upscale(image, body.upscaler_2, *inner, field="upscaler_2")
        out = Image.blend(out, second, body.extras_upscaler_2_visibility)
    if crop and out.size != (w, h):  # A1111: crop to the asked size, centred
        left, top = (out.width - w) // 2, (out.height - h) // 2
        out = out.crop((left, top, left + w, top + h))
    for field_name, name, visibility in faces:
        out = get_face_restorers(services).restore(
            out, name, visibility=visibility, codeformer_weight=body.codeformer_weight, field=field_name
        )
    return core_images.image_to_base64_png(out)


@router.post("/extra-single-image", response_model=ExtrasSingleImageResponse)
async def extra_single_image(services: ServicesDep, body: ExtrasSingleImageRequest) -> dict[str, Any]:
    image = await run_in_threadpool(_process, services, body, body.image, "image")
    return {"html_info": "", "image": image}


@router.post("/extra-batch-images", response_model=ExtrasBatchImagesResponse)
async def extra_batch_images(services: ServicesDep, body: ExtrasBatchImagesRequest) -> dict[str, Any]:
    if len(body.imageList) > services.settings.max_batch_images:
        raise InvalidRequest(
            f"imageList: at most {services.settings.max_batch_images} images", field="imageList"
        )
    images = [
        await run_in_threadpool(_process, services, body, item.data, f"imageList.{i}.data")
        for i, item in enumerate(body.imageList)
    ]
    return {"html_info": "", "images": images}


@router.get("/upscalers", response_model=list[dict[str, Any]])
async def upscalers(services: ServicesDep) -> list[dict[str, Any]]:
    found = await run_in_threadpool(get_upscalers, services)
    return [u.listing() for u in found.list()]


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
    return [{"name": f.name, "path": str(f.path), "scale": _scale(f.name)} for f in found]


def _scale(name: str) -> int:
    from sdgate.engine.upscalers import scale_hint

    return scale_hint(name)


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
