"""The ControlNet extension's own routes (``/controlnet/...``), as its clients call them: its
version, its models (``name [hash]``), its preprocessors with their sliders, and ``detect``, which
runs a preprocessor on images here (torch-free, on the API node) and returns the maps."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body
from pydantic import Field
from starlette.concurrency import run_in_threadpool

from sdgate.core import controlnet as core_controlnet
from sdgate.core import images as core_images
from sdgate.core.errors import InvalidRequest
from sdgate.server import jobflow
from sdgate.server.deps import ServicesDep, image_limits
from sdgate.server.dialects.a1111.controlnet import (
    DEFAULT_PROCESSOR_RES,
    MAX_PROCESSOR_RES,
    MIN_PROCESSOR_RES,
)
from sdgate.server.dialects.a1111.protocol import ImageData, Name, _Lenient
from sdgate.server.dialects.a1111.router import A1111Route
from sdgate.server.fetch import make_fetcher
from sdgate.server.services import Services

router = APIRouter(prefix="/controlnet", route_class=A1111Route, tags=["AUTOMATIC1111"])
# The extension's API version that recent releases answer (webuiapi and others only read it).
API_VERSION = 2
MAX_DETECT_IMAGES = 16


class DetectRequest(_Lenient):
    """The extension's ``/controlnet/detect`` body (``controlnet_images``: webuiapi's name)."""

    controlnet_module: Name = "none"
    controlnet_input_images: list[ImageData] = Field(default_factory=list, max_length=MAX_DETECT_IMAGES)
    controlnet_images: list[ImageData] | None = Field(None, max_length=MAX_DETECT_IMAGES)
    controlnet_processor_res: Annotated[int, Field(ge=-1, le=MAX_PROCESSOR_RES)] = DEFAULT_PROCESSOR_RES
    controlnet_threshold_a: Annotated[float, Field(ge=-1, le=10000, allow_inf_nan=False)] = -1
    controlnet_threshold_b: Annotated[float, Field(ge=-1, le=10000, allow_inf_nan=False)] = -1


@router.get("/version")
async def version() -> dict[str, int]:
    return {"version": API_VERSION}


@router.get("/model_list")
async def model_list(services: ServicesDep, update: bool = True) -> dict[str, list[str]]:
    """Each ControlNet as the extension shows it: ``name [first 8 of its sha256]`` (hashed once,
    cached like the checkpoints' hashes). Files are listed afresh on each call: ``update`` has
    nothing to add."""

    def names() -> list[str]:
        files = services.catalog.list_files("controlnet")
        return [f"{f.name} [{services.catalog.file_sha256(f.path)[:8]}]" for f in files]

    return {"model_list": await run_in_threadpool(names)}


@router.get("/module_list")
async def module_list(services: ServicesDep, alias_names: bool = False) -> dict[str, Any]:
    """The preprocessors this server runs (``alias_names``: by their UI labels) and each one's
    sliders, under the extension's keys."""
    found = core_controlnet.available(services.settings.resolved_models_dir)
    return {
        "module_list": [p.label if alias_names else p.name for p in found],
        "module_detail": {
            (p.label if alias_names else p.name): {"model_free": False, "sliders": p.a1111_sliders()}
            for p in found
        },
    }


@router.get("/settings")
async def settings(services: ServicesDep) -> dict[str, int]:
    return {"control_net_unit_count": services.settings.max_controlnets,
            "control_net_max_models_num": services.settings.max_controlnets}


@router.post("/detect")
async def detect(services: ServicesDep, body: Annotated[DetectRequest, Body()]) -> dict[str, Any]:
    """Each image's control map by ``controlnet_module``, as base64 PNGs."""
    return {"images": await run_in_threadpool(_detect, services, body), "info": "Success"}


def _detect(services: Services, body: DetectRequest) -> list[str]:
    images = body.controlnet_input_images or body.controlnet_images or []
    field = "controlnet_images" if body.controlnet_images and not body.controlnet_input_images else (
        "controlnet_input_images")
    if not images:
        raise InvalidRequest(f"{field}: no image given", field=field)
    module = jobflow.resolve_preprocessor(services, body.controlnet_module, field="controlnet_module")
    res = body.controlnet_processor_res
    if res == -1:
        res = DEFAULT_PROCESSOR_RES
    if not MIN_PROCESSOR_RES <= res <= MAX_PROCESSOR_RES:
        raise InvalidRequest(
            f"controlnet_processor_res: must be -1 or {MIN_PROCESSOR_RES} to {MAX_PROCESSOR_RES}, got {res}",
            field="controlnet_processor_res",
        )
    limits = image_limits(services)
    maps = []
    for i, value in enumerate(images):
        where = f"{field}.{i}"
        image = core_images.decode_base64_image(
            value, field=where, limits=limits, fetch_url=make_fetcher(services.settings, where)
        )
        control = core_controlnet.preprocess(
            module, image, resolution=res,
            threshold_a=body.controlnet_threshold_a, threshold_b=body.controlnet_threshold_b,
        )
        maps.append(core_images.image_to_base64_png(control))
    return maps
