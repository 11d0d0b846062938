"""The diffusers pipelines sdgate runs: the stock ones, minus their fixed multiple-of-8 size check.

``check_inputs`` in diffusers' SD and SDXL pipelines insists that height and width are multiples
of 8 whatever the VAE. sdgate checks sizes against the model's own VAE factor before it calls a
pipeline (a model whose VAE downsamples by 4 takes 36x20), so the stock check is shown the
nearest multiple of 8 instead; every other input check runs unchanged.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from diffusers import (
    StableDiffusionInpaintPipeline,
    StableDiffusionPipeline,
    StableDiffusionXLInpaintPipeline,
    StableDiffusionXLPipeline,
)
from diffusers.image_processor import VaeImageProcessor


def _up_to_8(value: Any) -> Any:
    return -(-int(value) // 8) * 8 if isinstance(value, int) else value


class _AnyVaeFactor:
    def check_inputs(self, *args: Any, **kwargs: Any) -> Any:
        parent = super().check_inputs  # type: ignore[misc]
        bound = inspect.signature(parent).bind(*args, **kwargs)
        for name in ("height", "width"):
            if name in bound.arguments:
                bound.arguments[name] = _up_to_8(bound.arguments[name])
        return parent(*bound.args, **bound.kwargs)


class SDPipeline(_AnyVaeFactor, StableDiffusionPipeline):
    """``StableDiffusionPipeline`` for SD 1.x / 2.x checkpoints."""


class SDXLPipeline(_AnyVaeFactor, StableDiffusionXLPipeline):
    """``StableDiffusionXLPipeline`` for SDXL base checkpoints."""


class _SeededLatents:
    """img2img / inpaint latents from sdgate's own per-seed noise (``sdgate_noise``, set per call)
    instead of the pipeline's draw, and A1111's "latent noise" / "latent nothing" fills
    (``sdgate_fill(image_latents, noise) -> start latents``) applied before noise is added.

    Unset (``None``), the stock ``prepare_latents`` runs.
    """

    sdgate_noise: torch.Tensor | None = None
    sdgate_fill: Any = None

    def prepare_latents(  # noqa: PLR0913 - diffusers' signature
        self,
        batch_size: int,
        num_channels_latents: int,
        height: int,
        width: int,
        dtype: torch.dtype,
        device: torch.device,
        generator: Any,
        latents: torch.Tensor | None = None,
        image: torch.Tensor | None = None,
        timestep: torch.Tensor | None = None,
        is_strength_max: bool = True,
        add_noise: bool = True,
        return_noise: bool = False,
        return_image_latents: bool = False,
    ) -> tuple[torch.Tensor, ...]:
        pipe: Any = self
        noise = self.sdgate_noise
        if noise is None or image is None:
            extra = {} if add_noise else {"add_noise": add_noise}
            return super().prepare_latents(  # type: ignore[misc,no-any-return]
                batch_size, num_channels_latents, height, width, dtype, device, generator, latents,
                image=image, timestep=timestep, is_strength_max=is_strength_max,
                return_noise=return_noise, return_image_latents=return_image_latents, **extra,
            )
        image = image.to(device=device, dtype=dtype)
        if image.shape[1] == num_channels_latents:
            image_latents = image
        else:
            image_latents = pipe._encode_vae_image(image=image, generator=generator)
        image_latents = image_latents.to(dtype).repeat(batch_size // image_latents.shape[0], 1, 1, 1)
        noise = noise.to(device=device, dtype=dtype)
        start = self.sdgate_fill(image_latents, noise) if self.sdgate_fill is not None else image_latents
        if is_strength_max:
            out = noise * pipe.scheduler.init_noise_sigma
        else:
            out = pipe.scheduler.add_noise(start, noise, timestep)
        outputs: tuple[torch.Tensor, ...] = (out,)
        if return_noise:
            outputs += (noise,)
        if return_image_latents:
            outputs += (image_latents,)
        return outputs


class SDInpaintPipeline(_SeededLatents, _AnyVaeFactor, StableDiffusionInpaintPipeline):
    """img2img and inpainting for SD 1.x / 2.x (4-channel UNets blend, 9-channel ones condition)."""


class SDXLInpaintPipeline(_SeededLatents, _AnyVaeFactor, StableDiffusionXLInpaintPipeline):
    """img2img and inpainting for SDXL."""


@contextmanager
def soft_mask(pipe: Any, soft: bool = True) -> Iterator[None]:
    """For one call, an inpaint pipeline that keeps the mask's grey levels (A1111's ``mask_round``
    false): the stock mask processor binarizes it, which is A1111's default rounding."""
    if not soft:
        yield
        return
    processor = pipe.mask_processor
    pipe.mask_processor = VaeImageProcessor.from_config({**processor.config, "do_binarize": False})
    try:
        yield
    finally:
        pipe.mask_processor = processor


PIPELINES: dict[str, Any] = {
    "StableDiffusionPipeline": SDPipeline,
    "StableDiffusionXLPipeline": SDXLPipeline,
}
