"""img2img and inpainting: one pipeline call of ``batch_size`` images from init images (and a mask).

Both modes run diffusers' inpaint pipelines (``engine.pipelines``): plain img2img is inpainting
with an all-white mask, which for a 4-channel UNet blends nothing and for a 9-channel inpainting
UNet is A1111's own img2img conditioning (mask weight 1). Noise comes from each image's seed on the
CPU, as in txt2img; the unmasked area is composited back from the original, as A1111 does.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from sdgate.core.engine import EngineInputs
from sdgate.core.errors import InvalidRequest
from sdgate.core.requests import GenerationRequest
from sdgate.engine import inpaint as ip
from sdgate.engine import ngms
from sdgate.engine.common import StepTracker
from sdgate.engine.pipelines import SDInpaintPipeline, SDXLInpaintPipeline, soft_mask
from sdgate.engine.prompts import PromptPlan
from sdgate.engine.sampling import StepCallback

log = logging.getLogger("sdgate.engine")

DEFAULT_DENOISING = 0.75
LATENT_UPSCALE = 3


def check_request(request: GenerationRequest, inputs: EngineInputs) -> None:
    """What an img2img / inpaint request must carry, field by field."""
    if not inputs.init_images:
        raise InvalidRequest("img2img needs at least one init image", field="init_images")
    strength = request.denoising_strength
    if strength is not None and not 0.0 <= strength <= 1.0:
        raise InvalidRequest("denoising_strength must be between 0 and 1", field="denoising_strength")
    if request.resize_mode not in (0, 1, 2, 3):
        raise InvalidRequest("resize_mode must be 0, 1, 2 or 3", field="resize_mode")
    if request.inpainting_fill not in (0, 1, 2, 3):
        raise InvalidRequest("inpainting_fill must be 0, 1, 2 or 3", field="inpainting_fill")
    if request.mask_blur_x < 0 or request.mask_blur_y < 0:
        raise InvalidRequest("mask_blur must be >= 0", field="mask_blur")
    if request.inpaint_full_res_padding < 0:
        raise InvalidRequest("inpaint_full_res_padding must be >= 0", field="inpaint_full_res_padding")


def effective_steps(steps: int, strength: float) -> int:
    """The steps img2img really runs: int(steps * denoising_strength), at least 1 (A1111)."""
    return max(1, min(steps, int(steps * strength)))


def strength_of(request: GenerationRequest, steps: int) -> float:
    strength = DEFAULT_DENOISING if request.denoising_strength is None else request.denoising_strength
    return max(strength, 1.0 / steps)  # 0 would run no step at all; A1111 then runs one


def variant(model: Any) -> Any:
    """The model's inpaint pipeline, built once from the loaded pipeline's components."""
    cached = model.variants.get("inpaint")
    if cached is None:
        pipe = model.pipeline
        if model.loaded.family == "sdxl":
            cached = SDXLInpaintPipeline(
                **pipe.components,
                force_zeros_for_empty_prompt=pipe.config.get("force_zeros_for_empty_prompt", True),
                add_watermarker=False,
            )
        else:
            cached = SDInpaintPipeline(**pipe.components, requires_safety_checker=False)
        cached.set_progress_bar_config(disable=True)
        model.variants["inpaint"] = cached
    return cached


@dataclass
class Img2ImgBatch:
    """One iteration's inputs: init images at processing size, originals for the composite."""

    init: list[Image.Image]
    originals: list[Image.Image]
    plan: ip.InpaintPlan | None


def prepare_batch(
    request: GenerationRequest, inputs: EngineInputs, width: int, height: int, first: int, count: int
) -> Img2ImgBatch:
    """Images ``first .. first + count`` of the job (init images cycle, as A1111's batches do)."""
    sources = [img.convert("RGB") for img in inputs.init_images]
    picked = [sources[(first + i) % len(sources)] for i in range(count)]
    mode = request.resize_mode
    if inputs.mask is None:
        init = [ip.resize_image(img, width, height, mode) for img in picked]
        return Img2ImgBatch(init, init, None)
    plan = ip.plan_inpaint(
        inputs.mask,
        source_size=picked[0].size,
        width=width,
        height=height,
        resize_mode=mode,
        invert=request.inpainting_mask_invert,
        blur_x=request.mask_blur_x,
        blur_y=request.mask_blur_y,
        full_res=request.inpaint_full_res,
        padding=request.inpaint_full_res_padding,
        fill_mode=request.inpainting_fill,
    )
    originals = [plan.source(img, width, height, mode) for img in picked]
    if plan.crop is not None:  # every source must match the mask the crop came from
        originals = [img.resize(plan.overlay_mask.size, Image.Resampling.LANCZOS) for img in originals]
    init = [plan.init_image(img, width, height) for img in originals]
    return Img2ImgBatch(init, originals, plan)


def latent_fill(fill_mode: int, mask: Image.Image, factor: int, *, rounded: bool = True) -> Any:
    """A1111's "latent noise" / "latent nothing" start latents in the masked area, or None
    (``rounded`` false: mixed by the mask's grey levels, as A1111 with ``mask_round`` off)."""
    if fill_mode not in (ip.LATENT_NOISE, ip.LATENT_NOTHING):
        return None

    def apply(latents: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        h, w = latents.shape[-2:]
        m = torch.from_numpy(np.asarray(mask.resize((w, h)), dtype=np.float32) / 255.0)
        m = (m.round() if rounded else m).to(latents)[None, None]
        inside = noise if fill_mode == ip.LATENT_NOISE else torch.zeros_like(latents)
        return latents * (1 - m) + inside * m

    return apply


def run(
    pipe: Any,
    request: GenerationRequest,
    inputs: EngineInputs,
    *,
    prompts: PromptPlan,
    width: int,
    height: int,
    steps: int,
    noise: torch.Tensor,
    generators: list[torch.Generator],
    tracker: StepTracker,
    family: str | None,
    factor: int,
    first: int,
    extra: dict[str, Any],
) -> tuple[torch.Tensor, Img2ImgBatch]:
    """Sample one batch; returns its latents and the batch (for ``finish``)."""
    count = noise.shape[0]
    batch = prepare_batch(request, inputs, width, height, first, count)
    if request.image_cfg_scale is not None:
        log.info("image_cfg_scale is ignored: only instruct-pix2pix models use it")
    mask = batch.plan.mask if batch.plan is not None else Image.new("L", (width, height), 255)
    image: Any = batch.init
    if request.resize_mode == LATENT_UPSCALE:
        if batch.plan is None and pipe.unet.config.in_channels == 4:
            image = _latent_upscaled(pipe, inputs, first, count, width, height, factor, generators)
        else:
            log.info("resize_mode 3 with a mask or an inpainting UNet: resizing pixels, not latents")
    pipe.sdgate_noise = noise * request.initial_noise_multiplier
    rounded = request.mask_round
    pipe.sdgate_fill = latent_fill(batch.plan.fill, mask, factor, rounded=rounded) if batch.plan else None
    kwargs: dict[str, Any] = {}
    if pipe.unet.config.in_channels == 4:  # blending only: skip encoding a masked image
        latent_c = pipe.vae.config.latent_channels
        kwargs["masked_image_latents"] = torch.zeros(1, latent_c, height // factor, width // factor)
    try:
        with (
            prompts.applied(pipe),  # AND parts, when the prompt has them
            ngms.maybe_skipping_uncond(pipe, request.s_min_uncond, prompts.batch),
            # Only a 4-channel UNet blends by the mask; an inpainting UNet's mask input stays
            # rounded, as A1111's inpainting conditioning always is.
            soft_mask(pipe, not rounded and pipe.unet.config.in_channels == 4),
        ):
            latents = pipe(
                **prompts.kwargs,
                image=image,
                mask_image=mask,
                height=height,
                width=width,
                strength=strength_of(request, steps),
                num_inference_steps=steps,
                guidance_scale=request.cfg_scale,
                generator=generators,
                output_type="latent",
                callback_on_step_end=prompts.wrap(StepCallback(tracker, family)),
                callback_on_step_end_tensor_inputs=prompts.tensor_inputs,
                **kwargs,
                **extra,
            ).images
    finally:
        pipe.sdgate_noise = None
        pipe.sdgate_fill = None
    return latents, batch


def _latent_upscaled(
    pipe: Any,
    inputs: EngineInputs,
    first: int,
    count: int,
    width: int,
    height: int,
    factor: int,
    generators: list[torch.Generator],
) -> torch.Tensor:
    """resize_mode 3: encode each init image at its own size, then resize the latents (bilinear)."""
    sources = [img.convert("RGB") for img in inputs.init_images]
    out = []
    for i in range(count):
        img = sources[(first + i) % len(sources)]
        w, h = max(factor, img.width // factor * factor), max(factor, img.height // factor * factor)
        tensor = pipe.image_processor.preprocess(img.resize((w, h)), height=h, width=w)
        tensor = tensor.to(device=pipe.vae.device, dtype=pipe.vae.dtype)
        with torch.inference_mode():
            latents = pipe._encode_vae_image(image=tensor, generator=generators[i])
        out.append(F.interpolate(latents.float(), size=(height // factor, width // factor), mode="bilinear"))
    return torch.cat(out)


def finish(pictures: list[Image.Image], batch: Img2ImgBatch) -> list[Image.Image]:
    """Inpainting: the original wherever the mask is black (and around an "only masked" crop)."""
    if batch.plan is None:
        return pictures
    return [batch.plan.composite(pic, orig) for pic, orig in zip(pictures, batch.originals, strict=True)]


def infotext_extras(request: GenerationRequest, inputs: EngineInputs, steps: int) -> dict[str, object]:
    """The img2img / inpaint parameters A1111 writes into the infotext."""
    extras: dict[str, object] = {"Denoising strength": strength_of(request, steps)}
    if inputs.mask is not None:
        blur = request.mask_blur_x if request.mask_blur_x == request.mask_blur_y else None
        extras["Mask blur"] = blur
        if request.inpaint_full_res:
            extras["Inpaint area"] = "Only masked"
            extras["Masked area padding"] = request.inpaint_full_res_padding
    if request.initial_noise_multiplier != 1.0:
        extras["Noise multiplier"] = request.initial_noise_multiplier
    return extras
