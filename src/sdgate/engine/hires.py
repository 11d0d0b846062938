"""Hires fix: upscale the first pass, then refine it with an img2img pass (A1111's txt2img hr).

1. The target size: ``hr_scale`` times the first pass, or ``hr_resize_x/y`` (one side alone keeps
   the aspect ratio; both crop to fill, as A1111), rounded down to the model's own VAE factor.
2. Upscale: a latent mode (``Latent``, ``Latent (bicubic antialiased)``, ...) interpolates the
   latents; any other name is an image upscaler of ``engine.upscalers`` (``None``, ``Lanczos``,
   ``Nearest``, ESRGAN files): decode, upscale the pictures, and encode again.
3. Refine: img2img on the same components (no second copy of the weights) with
   ``denoising_strength`` over ``hr_second_pass_steps`` (0: the first pass's steps), the hires
   sampler and prompts when given, and noise from the same seeds. It reports as the second of two
   passes per iteration, so progress counts both passes like A1111.

``hr_checkpoint_name`` runs step 3 on another checkpoint (``second``): latent upscales then start
from the first pass's latents in that model's space (through both VAEs when the spaces differ),
image upscales are encoded by its VAE. A refiner switches in this pass only (A1111's default
``hires_fix_refiner_pass``: "second pass"), on whichever model runs it.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image

from sdgate.core import limits
from sdgate.core.engine import StepAction
from sdgate.core.errors import InvalidRequest
from sdgate.core.models import ModelCatalog
from sdgate.core.requests import GenerationRequest, HiresSettings
from sdgate.engine import embeddings, ngms
from sdgate.engine import refiner as refiners
from sdgate.engine.common import StepTracker
from sdgate.engine.prompts import prompt_plan
from sdgate.engine.sampling import (
    StepCallback,
    check_finite,
    decode_latents,
    pass_noise,
    with_given_noise,
)
from sdgate.engine.schedulers import build_scheduler, eta_kwargs
from sdgate.engine.upscalers import Upscalers

# name -> (torch interpolate mode, antialias)
LATENT_MODES: dict[str, tuple[str, bool]] = {
    "Latent": ("bilinear", False),
    "Latent (antialiased)": ("bilinear", True),
    "Latent (bicubic)": ("bicubic", False),
    "Latent (bicubic antialiased)": ("bicubic", True),
    "Latent (nearest)": ("nearest", False),
    "Latent (nearest-exact)": ("nearest-exact", False),
}
_UPSCALERS: dict[tuple[str, ...], Upscalers] = {}  # by the ESRGAN files found: one loaded network each


@dataclass(frozen=True)
class HiresSize:
    upscale_w: int  # what the upscale produces
    upscale_h: int
    width: int  # after the crop to the asked size
    height: int


def target_size(width: int, height: int, hires: HiresSettings, factor: int) -> HiresSize:
    """A1111's ``hr_upscale_to_x/y`` and crop, in multiples of ``factor`` (the arithmetic is
    ``core.limits.hires_size``, which also bounds it before a job exists)."""
    size = limits.hires_size(limits.Size(width, height), hires, factor)
    snap = (size.upscale.width, size.upscale.height, size.final.width, size.final.height)
    if min(snap) <= 0:
        final = f"{size.final.width}x{size.final.height}"
        raise InvalidRequest(f"hires target {final} is too small", field="hr_scale")
    return HiresSize(*snap)


def check(hires: HiresSettings) -> None:
    if hires.upscaler.startswith("Latent") and hires.upscaler not in LATENT_MODES:
        known = ", ".join(LATENT_MODES)
        raise InvalidRequest(
            f"hr_upscaler: could not find upscaler named {hires.upscaler!r} ({known})", field="hr_upscaler"
        )
    if not 0.0 <= hires.denoising_strength <= 1.0:
        raise InvalidRequest("denoising_strength must be between 0 and 1", field="denoising_strength")
    if hires.scale <= 0 or hires.second_pass_steps < 0:
        raise InvalidRequest("hr_scale must be > 0 and hr_second_pass_steps >= 0", field="hr_scale")


def second_pass_steps(request: GenerationRequest, steps: int) -> tuple[int, int]:
    """(steps asked of the sampler, steps it actually runs at the denoising strength)."""
    assert request.hires is not None
    asked = request.hires.second_pass_steps or steps
    return asked, min(asked, int(asked * request.hires.denoising_strength))


def hires_request(request: GenerationRequest) -> GenerationRequest:
    """The request as the second pass sees it: its own prompts when given."""
    assert request.hires is not None
    return request.model_copy(
        update={
            "prompt": request.hires.prompt or request.prompt,
            "negative_prompt": request.hires.negative_prompt or request.negative_prompt,
        }
    )


def upscale_latents(latents: torch.Tensor, size: HiresSize, factor: int, mode: str) -> torch.Tensor:
    interpolation, antialias = LATENT_MODES[mode]
    out = F.interpolate(
        latents.float(),
        size=(size.upscale_h // factor, size.upscale_w // factor),
        mode=interpolation,
        antialias=antialias,
    ).to(latents.dtype)
    return _crop(out, size.height // factor, size.width // factor)


def image_upscalers(catalog: ModelCatalog, device: Any) -> Upscalers:
    """The image upscalers (None, Lanczos, Nearest, spandrel model files), kept between jobs."""
    files = catalog.list_files("esrgan")
    key = tuple(sorted(str(f.path) for f in files))
    if key not in _UPSCALERS:
        _UPSCALERS.clear()
        _UPSCALERS[key] = Upscalers(files, device)
    return _UPSCALERS[key]


def upscale_pictures(
    pictures: list[Image.Image], size: HiresSize, upscalers: Upscalers, name: str
) -> list[Image.Image]:
    out = []
    for picture in pictures:
        big = upscalers.upscale(picture, name, size.upscale_w, size.upscale_h, field="hr_upscaler")
        left, top = (size.upscale_w - size.width) // 2, (size.upscale_h - size.height) // 2
        out.append(big.crop((left, top, left + size.width, top + size.height)))
    return out


def _crop(latents: torch.Tensor, height: int, width: int) -> torch.Tensor:
    top, left = (latents.shape[-2] - height) // 2, (latents.shape[-1] - width) // 2
    return latents[..., top : top + height, left : left + width]


_VARIANTS: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()


def existing_img2img_pipeline(pipe: Any) -> Any | None:
    """The img2img pipeline ``img2img_pipeline`` made over ``pipe``, if it made one."""
    return _VARIANTS.get(pipe)


def img2img_pipeline(pipe: Any, family: str | None) -> Any:
    """An img2img pipeline over ``pipe``'s own components (made once per loaded pipeline)."""
    variant = _VARIANTS.get(pipe)
    if variant is None:
        from diffusers import StableDiffusionImg2ImgPipeline, StableDiffusionXLImg2ImgPipeline

        cls = StableDiffusionXLImg2ImgPipeline if family == "sdxl" else StableDiffusionImg2ImgPipeline
        variant = with_given_noise(cls).from_pipe(pipe)  # noise for variation seeds / seed resize
        variant.set_progress_bar_config(disable=True)
        _VARIANTS[pipe] = variant
    variant.scheduler = pipe.scheduler
    return variant


def seeded_generators(seeds: list[int]) -> list[torch.Generator]:
    """The hires pass draws its noise from the images' seeds again, as A1111."""
    return [torch.Generator("cpu").manual_seed(seed % 2**64) for seed in seeds]


def infotext_params(request: GenerationRequest, second: Any = None) -> dict[str, object]:
    """A1111's hires keys; ``second``: the LoadedModel of ``hr_checkpoint_name`` when it ran."""
    hires = request.hires
    assert hires is not None
    resize = hires.resize_x > 0 or hires.resize_y > 0
    return {
        "Denoising strength": hires.denoising_strength,
        "Hires upscale": None if resize else hires.scale,
        "Hires resize": f"{hires.resize_x}x{hires.resize_y}" if resize else None,
        "Hires steps": hires.second_pass_steps or None,
        "Hires upscaler": hires.upscaler,
        "Hires checkpoint": None if second is None else f"{second.info.stem} [{second.info.short_hash}]",
        "Hires sampler": hires.sampler,
        "Hires schedule type": hires.scheduler,
        "Hires prompt": hires.prompt or None,
        "Hires negative prompt": hires.negative_prompt or None,
    }


@dataclass
class HiresPass:
    pictures: list[Image.Image]
    action: StepAction
    used_embeddings: dict[str, str] = field(default_factory=dict)  # for the infotext's TI hashes
    refined: bool = False  # the refiner ran part of this pass


def second_pass(
    pipe: Any,
    family: str | None,
    base_scheduler_config: dict[str, Any],
    request: GenerationRequest,
    latents: torch.Tensor,
    seeds: list[int],
    *,
    width: int,
    height: int,
    steps: int,
    factor: int,
    tracker: StepTracker,
    catalog: ModelCatalog,
    subseeds: list[int] | None = None,
    second: Any = None,
    refiner: refiners.Refiner | None = None,
) -> HiresPass:
    """Upscale the first pass's ``latents`` and refine them; ``tracker`` reports this pass.

    ``second``: the LoadedModel this pass runs on (``hr_checkpoint_name``); None: ``pipe``'s.
    """
    hires = request.hires
    assert hires is not None
    first_pipe, first_family = pipe, family
    if second is not None:
        pipe, family = second.pipeline, second.loaded.family
        base_scheduler_config, factor = second.base_scheduler_config, second.loaded.vae_scale_factor
    size = target_size(width, height, hires, factor)
    asked, runs = second_pass_steps(request, steps)
    # 1. Upscale (the first pass's latents, in this pass's latent space).
    if hires.upscaler in LATENT_MODES:
        latents = refiners.convert_latents(latents, first_pipe, first_family, pipe, family)
        image: Any = upscale_latents(latents, size, factor, hires.upscaler)
    else:
        upscalers = image_upscalers(catalog, latents.device)
        image = upscale_pictures(decode_latents(first_pipe, latents), size, upscalers, hires.upscaler)
    if runs < 1:  # nothing to refine at this strength
        pictures = decode_latents(pipe, image) if isinstance(image, torch.Tensor) else image
        return HiresPass(pictures, tracker.action)
    # 2. The hires sampler on the same components.
    plan = build_scheduler(
        hires.sampler or request.sampler,
        hires.scheduler or request.scheduler,
        base_scheduler_config,
        family=family,
        seeds=seeds,
        eta=request.eta,
        s_noise=request.s_noise,
        s_churn=request.s_churn,
        s_tmin=request.s_tmin,
        s_tmax=request.s_tmax,
    )
    variant = img2img_pipeline(pipe, family)
    variant.scheduler = plan.scheduler
    # A1111 draws this pass's noise like the first's: variation seeds and seed resize included.
    shape = (pipe.vae.config.latent_channels, size.height // factor, size.width // factor)
    subseeds = subseeds or [request.subseed] * len(seeds)
    variant.sdgate_noise = pass_noise(request, seeds, subseeds, shape, factor)
    # 3. Refine.
    # Prompt editing counts over the hires steps, on A1111's hires timeline ([a:b:1.5] is halfway).
    embeds = embeddings.for_pipeline(catalog, variant)
    pass_request = hires_request(request)
    prompts = prompt_plan(variant, family, pass_request, asked, hires_of=steps, embeddings=embeds)
    generators = seeded_generators(seeds)
    first = refiner.first_part(tracker, runs, plan.scheduler.order) if refiner is not None else None
    with prompts.applied(variant), ngms.maybe_skipping_uncond(variant, request.s_min_uncond, prompts.batch):
        out = variant(
            **prompts.kwargs,
            image=image,
            strength=hires.denoising_strength,
            num_inference_steps=asked,
            guidance_scale=request.cfg_scale,
            generator=generators,
            output_type="latent",
            callback_on_step_end=prompts.wrap(StepCallback(refiners.reporting(first, tracker), family)),
            callback_on_step_end_tensor_inputs=prompts.tensor_inputs,
            **eta_kwargs(plan, request.eta),
        ).images
    refined = first is not None and first.switched and tracker.action == StepAction.CONTINUE
    if refined:
        assert refiner is not None and first is not None
        out = refiner.continue_sampling(
            first, out, pipe=variant, family=family, request=pass_request, prompt_steps=asked,
            hires_of=steps, width=size.width, height=size.height, generators=generators,
            extra=eta_kwargs(plan, request.eta), catalog=catalog,
        )  # fmt: skip
        pipe = refiner.pipeline
    check_finite(out, hires.sampler or request.sampler)
    return HiresPass(decode_latents(pipe, out), tracker.action, prompts.used_embeddings, refined)
