"""The torch pieces of one pipeline call: seeded noise, the step callback, previews, decoding.

Noise is drawn per image on the CPU from that image's own seed (A1111's rule), so a request gives
the same pixels on the same device every time, and image i of a batch equals seed + i alone.
"""

from __future__ import annotations

from typing import Any

import torch
from PIL import Image

from sdgate.core.engine import StepAction
from sdgate.core.errors import GenerationFailed, InvalidRequest
from sdgate.core.requests import MAX_SEED, GenerationRequest
from sdgate.engine import previews
from sdgate.engine.common import StepTracker

MAX_SEED_RESIZE = 16384  # pixels per side: the noise is drawn at this size


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
    resize_from: tuple[int, int] | None = None,
) -> tuple[torch.Tensor, list[torch.Generator]]:
    """Initial latents (one ``shape`` = (C, H, W) per seed) and the generators for later noise.

    As in A1111, each image's generator keeps going after the initial draw (ancestral samplers
    take their step noise from it), unless ENSD re-seeds it with seed + ENSD.

    ``resize_from`` = (H, W) in latent pixels is A1111's seed resize: the noise (and the variation
    noise) is drawn at that size and pasted, centred, into a full-size draw from the same seed,
    cropped where it is larger, so a seed keeps its composition at a new image size.
    """
    small = shape if resize_from is None else (shape[0], *resize_from)
    noises, generators = [], []
    for seed, subseed in zip(seeds, subseeds, strict=True):
        sub = torch.randn(small, generator=_generator(subseed)) if subseed_strength > 0 else None
        gen = _generator(seed)
        noise = torch.randn(small, generator=gen if small == shape else _generator(seed))
        if sub is not None:
            noise = slerp(subseed_strength, noise, sub)
        if small != shape:
            noise = paste_centred(noise, torch.randn(shape, generator=gen))
        noises.append(noise)
        generators.append(_generator(seed + ensd) if ensd else gen)
    return torch.stack(noises), generators


def paste_centred(noise: torch.Tensor, background: torch.Tensor) -> torch.Tensor:
    """A1111's seed-resize paste: ``noise`` centred on ``background``, cropped to fit (C, H, W)."""
    out = background.clone()
    (_, nh, nw), (_, bh, bw) = noise.shape, background.shape
    dy, dx = (bh - nh) // 2, (bw - nw) // 2
    h, w = nh + 2 * min(dy, 0), nw + 2 * min(dx, 0)  # A1111's arithmetic, odd margins included
    ty, tx = max(dy, 0), max(dx, 0)
    sy, sx = max(-dy, 0), max(-dx, 0)
    out[:, ty : ty + h, tx : tx + w] = noise[:, sy : sy + h, sx : sx + w]
    return out


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
        preview = previews.for_step(pipe, latents, self.family)  # built only when someone asks
        action = self.tracker.advance(min(index + 1, total), total, preview)
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


def seed_resize_from(request: GenerationRequest, factor: int) -> tuple[int, int] | None:
    """The request's seed resize as (H, W) in latent pixels; None when off (either side <= 0,
    A1111's rule). A size that is not a multiple of the model's VAE factor is a client error."""
    w, h = request.seed_resize_from_w, request.seed_resize_from_h
    if w <= 0 or h <= 0:
        return None
    for name, value in (("seed_resize_from_w", w), ("seed_resize_from_h", h)):
        if value % factor or value > MAX_SEED_RESIZE:
            raise InvalidRequest(
                f"{name}: must be a multiple of {factor} up to {MAX_SEED_RESIZE} for this model, got {value}",
                field=name,
            )
    return h // factor, w // factor


def pass_noise(
    request: GenerationRequest,
    seeds: list[int],
    subseeds: list[int],
    shape: tuple[int, int, int],
    factor: int,
) -> torch.Tensor | None:
    """A later pass's noise (hires fix) as A1111 draws it, when that is not the plain per-seed draw
    a pipeline makes itself: with variation seeds or seed resize. None otherwise."""
    resize = seed_resize_from(request, factor)
    if request.subseed_strength <= 0 and resize is None:
        return None
    return initial_noise(seeds, subseeds, request.subseed_strength, shape, resize_from=resize)[0]


class GivenNoise:
    """An img2img pipeline mixin: when ``sdgate_noise`` is set, it is the noise added to the image
    latents instead of the pipeline's own draw (which still happens, so each generator advances
    as before and the sampler's later noise is unchanged). Set it before every call."""

    sdgate_noise: torch.Tensor | None = None

    def prepare_latents(self, *args: Any, **kwargs: Any) -> Any:
        parent = super().prepare_latents  # type: ignore[misc]
        given, scheduler = self.sdgate_noise, self.scheduler  # type: ignore[attr-defined]
        if given is None:
            return parent(*args, **kwargs)
        stock = scheduler.add_noise

        def add_given(original: torch.Tensor, drawn: torch.Tensor, timesteps: Any) -> Any:
            return stock(original, given.to(drawn), timesteps)

        scheduler.add_noise = add_given  # this scheduler is the job's own, built for this call
        try:
            return parent(*args, **kwargs)
        finally:
            del scheduler.add_noise


_GIVEN_NOISE: dict[type, type] = {}


def with_given_noise(cls: type) -> type:
    """``cls`` (a diffusers img2img pipeline class) with ``GivenNoise`` mixed in; one per class."""
    if cls not in _GIVEN_NOISE:
        _GIVEN_NOISE[cls] = type(cls.__name__, (GivenNoise, cls), {"__module__": __name__})
    return _GIVEN_NOISE[cls]
