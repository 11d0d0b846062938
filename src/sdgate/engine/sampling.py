"""The torch pieces of one pipeline call: seeded noise, the step callback, previews, decoding.

Noise is drawn per image on the CPU from that image's own seed (A1111's rule), so a request gives
the same pixels on the same device every time, and image i of a batch equals seed + i alone.
"""

from __future__ import annotations

from typing import Any

import torch
from PIL import Image

from sdgate.core.engine import StepAction
from sdgate.core.errors import GenerationFailed
from sdgate.core.requests import MAX_SEED
from sdgate.engine.common import StepTracker

# Latent -> RGB projections (A1111's "Approx cheap" preview); rows are latent channels.
PREVIEW_SD = ((0.298, 0.207, 0.208), (0.187, 0.286, 0.173), (-0.158, 0.189, 0.264), (-0.184, -0.271, -0.473))
PREVIEW_SDXL = (
    (0.3448, 0.4168, 0.4395),
    (-0.1953, -0.0290, 0.0250),
    (0.1074, 0.0886, -0.0163),
    (-0.3730, -0.2499, -0.2088),
)


def _generator(seed: int) -> torch.Generator:
    return torch.Generator("cpu").manual_seed(seed % (MAX_SEED + 1))


def slerp(val: float, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """A1111's spherical interpolation of two noise tensors (variation seeds), as it writes it."""
    low_norm = low / torch.norm(low, dim=1, keepdim=True)
    high_norm = high / torch.norm(high, dim=1, keepdim=True)
    dot = (low_norm * high_norm).sum(1)
    if dot.mean() > 0.9995:
        return low * val + high * (1 - val)
    omega = torch.acos(dot)
    so = torch.sin(omega)
    return (torch.sin((1.0 - val) * omega) / so).unsqueeze(1) * low + (torch.sin(val * omega) / so).unsqueeze(
        1
    ) * high


def initial_noise(
    seeds: list[int],
    subseeds: list[int],
    subseed_strength: float,
    shape: tuple[int, int, int],
    *,
    ensd: int = 0,
) -> tuple[torch.Tensor, list[torch.Generator]]:
    """Initial latents (one ``shape`` = (C, H, W) per seed) and the generators for later noise.

    As in A1111, each image's generator keeps going after the initial draw (ancestral samplers
    take their step noise from it), unless ENSD re-seeds it with seed + ENSD.
    """
    noises, generators = [], []
    for seed, subseed in zip(seeds, subseeds, strict=True):
        sub = torch.randn(shape, generator=_generator(subseed)) if subseed_strength > 0 else None
        gen = _generator(seed)
        noise = torch.randn(shape, generator=gen)
        if sub is not None:
            noise = slerp(subseed_strength, noise, sub)
        noises.append(noise)
        generators.append(_generator(seed + ensd) if ensd else gen)
    return torch.stack(noises), generators


def latent_preview(latents: torch.Tensor, family: str | None) -> Image.Image:
    """The first image of a latent batch as RGB by a linear projection: no VAE, a few microseconds."""
    x = latents[0].float()
    if x.shape[0] == 4:
        coefs = torch.tensor(PREVIEW_SDXL if family == "sdxl" else PREVIEW_SD, device=x.device)
        rgb = torch.einsum("chw,cr->rhw", x, coefs)
    else:  # an unknown latent space: show its first channels
        rgb = x[:3] if x.shape[0] >= 3 else x[:1].expand(3, -1, -1)
    array = ((rgb + 1.0) / 2.0).clamp(0, 1).mul(255).round().byte().permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(array, "RGB")


class StepCallback:
    """diffusers' ``callback_on_step_end``: reports steps and stops the loop when asked to.

    Interrupt and skip use the pipeline's documented ``_interrupt`` flag (the loop then ends and the
    current latents come back); cancel raises ``JobCancelled`` out of the pipeline. Steps are counted
    from the scheduler's ``begin_index``: img2img and the hires pass run a truncated loop while the
    scheduler keeps every timestep.
    """

    def __init__(self, tracker: StepTracker, family: str | None) -> None:
        self.tracker = tracker
        self.family = family

    def __call__(self, pipe: Any, index: int, timestep: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
        begin = getattr(pipe.scheduler, "begin_index", None) or 0
        total = max(1, len(pipe.scheduler.timesteps) - begin)
        latents = kwargs["latents"][:1].detach().clone()  # a snapshot: the preview may render later
        family = self.family
        action = self.tracker.advance(min(index + 1, total), total, lambda: latent_preview(latents, family))
        if action != StepAction.CONTINUE:
            pipe._interrupt = True
        return {}


def check_finite(latents: torch.Tensor, sampler: str) -> None:
    """NaNs from the UNet would decode to black images; say so instead (A1111's NansException)."""
    if not bool(torch.isfinite(latents).all()):
        raise GenerationFailed(
            f"the {sampler} sampler produced NaNs (the model in half precision, or the sampler); "
            "try another sampler or precision fp32/bf16"
        )


def decode_latents(pipe: Any, latents: torch.Tensor) -> list[Image.Image]:
    """Latents -> PIL images through the model's own VAE (its dtype, scaling and shift)."""
    vae = pipe.vae
    cfg = vae.config
    z = latents.to(device=vae.device, dtype=vae.dtype)
    mean, std = getattr(cfg, "latents_mean", None), getattr(cfg, "latents_std", None)
    if mean is not None and std is not None:
        shape = (1, len(mean), 1, 1)
        z = z * torch.tensor(std).view(shape).to(z) / cfg.scaling_factor + torch.tensor(mean).view(shape).to(
            z
        )
    else:
        z = z / cfg.scaling_factor + (getattr(cfg, "shift_factor", None) or 0.0)
    with torch.inference_mode():
        image = vae.decode(z, return_dict=False)[0]
    return pipe.image_processor.postprocess(image, output_type="pil")  # type: ignore[no-any-return]
