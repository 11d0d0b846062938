"""``/api/v1`` for ControlNet: the ControlNets a job may name (``controlnets[].model``), the
preprocessors it may ask for (``controlnets[].module``) with their parameters, and a preprocessor
run on one image here, on the API node (torch-free), to see the control map a unit would use."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from sdgate.core import controlnet as core_controlnet
from sdgate.core import images as core_images
from sdgate.server import jobflow
from sdgate.server.auth import Principal
from sdgate.server.deps import CurrentPrincipal, ServicesDep, image_limits
from sdgate.server.dialects.native import images as native_images
from sdgate.server.dialects.native.jobs import can_see_image
from sdgate.server.dialects.native.protocol import MAX_IMAGE_CHARS, _Float, _Name, _Strict
from sdgate.server.dialects.native.router import NativeRoute
from sdgate.server.runtime import RuntimeDep, ServerRuntime

router = APIRouter(prefix="/api/v1", route_class=NativeRoute, tags=["native"])


class ControlNetOut(BaseModel):
    name: str = Field(description="what controlnets[].model names")
    file: str = Field(description="its file or folder under the models folder's ControlNet/")


class SliderOut(BaseModel):
    name: str
    value: float = Field(description="its default")
    min: float
    max: float
    step: float


class PreprocessorOut(BaseModel):
    name: str = Field(description="what controlnets[].module names")
    label: str = Field(description="A1111's label for it")
    description: str
    uses_resolution: bool = Field(description="whether processor_res applies")
    sliders: list[SliderOut] = Field(description="threshold_a's, then threshold_b's")


class DetectIn(_Strict):
    """``POST /api/v1/controlnet/detect``: one image through one preprocessor."""

    module: _Name = Field(description="a preprocessor (GET /api/v1/controlnet/preprocessors)")
    image: str = Field(max_length=MAX_IMAGE_CHARS,
                       description="base64, a data: URI, or an upload id (img_...)")
    processor_res: int = Field(512, ge=64, le=2048, description="the preprocessor's working resolution")
    threshold_a: _Float | None = Field(None, ge=0.0, le=10000.0, description="null: its default")
    threshold_b: _Float | None = Field(None, ge=0.0, le=10000.0, description="null: its default")


class DetectOut(BaseModel):
    module: str = Field(description="the preprocessor that ran (its canonical name)")
    image: str = Field(description="the control map, a PNG data: URI")
    width: int
    height: int


@router.get("/controlnets", response_model=list[ControlNetOut])
async def controlnets(services: ServicesDep) -> list[dict[str, Any]]:
    """The ControlNets a job may name in ``controlnets[].model`` (the built-in demo one among them
    when the built-in model is listed)."""
    files = await run_in_threadpool(services.catalog.list_files, "controlnet")
    return [{"name": f.name, "file": f.relpath} for f in files]


@router.get("/controlnet/preprocessors", response_model=list[PreprocessorOut])
async def preprocessors(services: ServicesDep) -> list[dict[str, Any]]:
    """The preprocessors this server runs, with their parameters' ranges and defaults."""
    found = core_controlnet.available(services.settings.resolved_models_dir)
    return [
        {"name": p.name, "label": p.label, "description": p.description, "uses_resolution": p.uses_resolution,
         "sliders": [vars(s) for s in p.sliders]}
        for p in found
    ]


@router.post("/controlnet/detect", response_model=DetectOut)
async def detect(runtime: RuntimeDep, principal: CurrentPrincipal,
                 body: Annotated[DetectIn, Body()]) -> dict[str, Any]:
    """The control map ``module`` makes of ``image``, as a job's unit with that module would use it
    (before it is fitted to the generation's size). Nothing is stored."""
    return await run_in_threadpool(_detect, runtime, principal, body)


def _detect(runtime: ServerRuntime, principal: Principal, body: DetectIn) -> dict[str, Any]:
    services = runtime.services
    module = jobflow.resolve_preprocessor(services, body.module, field="module")
    image = native_images.read_input(
        services.images, body.image, field="image", limits=image_limits(services), mode="RGB",
        visible=lambda image_id: can_see_image(runtime, image_id, principal),
    )
    control = core_controlnet.preprocess(module, image, resolution=body.processor_res,
                                         threshold_a=body.threshold_a, threshold_b=body.threshold_b)
    return {"module": module, "image": "data:image/png;base64," + core_images.image_to_base64_png(control),
            "width": control.width, "height": control.height}
