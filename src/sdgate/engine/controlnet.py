"""ControlNet guidance as a UNet hook: residuals added to every UNet call of a sampling pass.

One forward pre-hook on the UNet (``controlled``) runs each active ControlNet on the UNet's own
inputs (noisy latents, timestep, text conditioning, SDXL's added conditioning) and hands the UNet
the sum of their residuals as ``down_block_additional_residuals`` / ``mid_block_additional_residual``.
So txt2img, img2img, inpainting and every sampler get ControlNet without a pipeline of their own,
and the ComfyUI executor uses the same two names with its own sampling loop.

The API (no request type needed)::

    hints = [ControlHint(net, image, weight=1.0, start=0.0, end=1.0, mode=ControlMode.BALANCED, mask=None)]
    with controlled(unet, hints, progress, batch=rows_per_half):
        ...  # every UNet call inside gets the hints' residuals

- ``net``: a diffusers ``ControlNetModel`` on the UNet's device and dtype (``controlnet_units.net_for``
  gives one from the engine's model cache; ``controlnet_loading`` finds and builds them).
- ``image``: the control map as a float tensor ``(1, C, H, W)`` in [0, 1] (``control_tensor`` makes
  one from a PIL image), at the pass's pixel size; it is resized to the latents' size times the
  ControlNet's own downsampling when they differ (models whose VAE does not downsample by 8).
- ``weight``: 0 means no effect at all (the unit is skipped: the image equals the plain one).
- ``start`` / ``end``: the fraction of the pass's sampling steps the unit guides in (A1111's guidance
  start/end; ``step / steps`` in ``[start, end]``).
- ``mode``: ``BALANCED`` residuals on both CFG halves; ``PROMPT`` ("My prompt is more important")
  A1111's soft injection, residual i of n scaled by ``0.825 ** (n - 1 - i)`` (the middle block's by
  1); ``CONTROLNET`` ("ControlNet is more important") residuals on the conditional half only.
- ``mask``: ``(1, 1, H, W)`` in [0, 1]; each residual is multiplied by it, resized to its size.

``progress(timestep) -> float`` says how far the pass is (0 at its first step, ``(n-1)/n`` at its
last): ``scheduler_progress(lambda: pipe.scheduler)`` reads it from a diffusers scheduler;
``StepProgress(steps)`` is a counter a hand-written loop advances (``progress.step = i``).
``batch`` is the rows of one CFG half: a UNet call with ``2 * batch`` rows is ``[uncond, cond]``,
any other call is all conditional (no CFG, or NGMS ran the cond half alone). A call whose latents
are not the size the hints were prepared for (a hires pass) and a call that already carries
residuals (AND's extra evaluations, which reuse the first call's) are left alone. Several hints:
their residuals are summed (multi-ControlNet).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from sdgate.core.requests import ControlMode

SOFT_INJECTION = 0.825  # A1111's "My prompt is more important": per-level decay of the residuals

Progress = Callable[[Any], float]


@dataclass
class ControlHint:
    """One ControlNet unit ready to apply (see the module docstring)."""

    net: Any
    image: torch.Tensor
    weight: float = 1.0
    start: float = 0.0
    end: float = 1.0
    mode: ControlMode = ControlMode.BALANCED
    mask: torch.Tensor | None = None

    def active(self, fraction: float) -> bool:
        return self.weight != 0.0 and self.start <= fraction <= self.end


def control_tensor(image: Image.Image) -> torch.Tensor:
    """A PIL control map as ``(1, 3, H, W)`` float32 in [0, 1] (what diffusers' ControlNets take)."""
    array = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(array).permute(2, 0, 1)[None].contiguous()


def mask_tensor(mask: Image.Image) -> torch.Tensor:
    """A PIL mask (white: guide here) as ``(1, 1, H, W)`` float32 in [0, 1]."""
    array = np.asarray(mask.convert("L"), dtype=np.float32) / 255.0
    return torch.from_numpy(array)[None, None].contiguous()


class StepProgress:
    """Progress for a hand-written sampling loop: set ``step`` (0-based) before each step's UNet call."""

    def __init__(self, steps: int) -> None:
        self.steps = max(1, steps)
        self.step = 0

    def __call__(self, timestep: Any) -> float:
        return self.step / self.steps


def scheduler_progress(scheduler_of: Callable[[], Any]) -> Progress:
    """Progress from a diffusers scheduler (``scheduler_of()`` at each call: a job may swap it):
    its ``step_index`` where it keeps one, else the timestep's place in its ``timesteps``; counted
    from where the pass began (img2img starts part-way into the schedule)."""
    began: list[Any] = [None, 0]  # the scheduler last seen, and the index its pass began at

    def progress(timestep: Any) -> float:
        scheduler = scheduler_of()
        timesteps = getattr(scheduler, "timesteps", None)
        if timesteps is None or len(timesteps) == 0:
            return 0.0
        index = getattr(scheduler, "step_index", None)
        if index is None:
            index = _timestep_index(timesteps, timestep, getattr(scheduler, "begin_index", None))
        if began[0] is not scheduler:
            began[:] = [scheduler, min(int(index), _begin(scheduler, int(index)))]
        start = int(began[1])
        return (int(index) - start) / max(1, len(timesteps) - start)

    return progress


def _begin(scheduler: Any, index: int) -> int:
    begin = getattr(scheduler, "begin_index", None)
    return index if begin is None else int(begin)


def _timestep_index(timesteps: torch.Tensor, timestep: Any, begin: int | None) -> int:
    t = timestep.flatten()[0] if isinstance(timestep, torch.Tensor) else torch.tensor(float(timestep))
    distance = (timesteps.float().cpu() - float(t)).abs()
    if begin:
        distance[:begin] = float("inf")
    return int(distance.argmin())


class ControlHook:
    """The UNet forward pre-hook (with kwargs) that adds the hints' residuals."""

    def __init__(self, unet: Any, hints: Sequence[ControlHint], progress: Progress, batch: int) -> None:
        self.hints = list(hints)
        self.progress = progress
        self.batch = batch
        # The class's signature: an offload hook or the compile dispatcher may replace the instance's.
        self._signature = inspect.signature(type(unet).forward)
        self.calls = 0  # UNet calls given residuals (tests and logs)

    def __call__(self, module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        bound = self._signature.bind(module, *args, **kwargs).arguments
        extra = bound.get("kwargs", {})
        if (
            bound.get("down_block_additional_residuals") is not None
            or extra.get("down_block_additional_residuals") is not None
        ):
            return None
        sample: torch.Tensor = bound["sample"]
        fraction = self.progress(bound["timestep"])
        active = [h for h in self.hints if h.active(fraction)]
        if not active:
            return None
        down, mid = self._residuals(active, sample, bound)
        if down is None:
            return None
        self.calls += 1
        kwargs = dict(kwargs)
        kwargs["down_block_additional_residuals"] = tuple(down)
        kwargs["mid_block_additional_residual"] = mid
        return args, kwargs

    def _residuals(
        self, hints: list[ControlHint], sample: torch.Tensor, bound: dict[str, Any]
    ) -> tuple[list[torch.Tensor] | None, torch.Tensor | None]:
        rows = sample.shape[0]
        cond_rows = torch.ones(rows, dtype=torch.bool, device=sample.device)
        if rows == 2 * self.batch:
            cond_rows[: self.batch] = False  # diffusers batches [uncond, cond]
        down: list[torch.Tensor] | None = None
        mid: torch.Tensor | None = None
        for hint in hints:
            pair = self._one(hint, sample, bound, cond_rows)
            if pair is None:
                continue
            d, m = pair
            if down is None or mid is None:
                down, mid = d, m
            else:
                down = [a + b for a, b in zip(down, d, strict=True)]
                mid = mid + m
        return down, mid

    def _one(
        self, hint: ControlHint, sample: torch.Tensor, bound: dict[str, Any], cond_rows: torch.Tensor
    ) -> tuple[list[torch.Tensor], torch.Tensor] | None:
        net = hint.net
        factor = embedding_factor(net)
        height, width = sample.shape[-2] * factor, sample.shape[-1] * factor
        image = hint.image
        if image.shape[-2:] != (height, width):
            if not _same_aspect(image.shape[-2:], (height, width)):
                return None  # another pass's size (hires fix): not prepared for it
            image = F.interpolate(image.float(), size=(height, width), mode="bilinear", align_corners=False)
        rows = sample.shape[0]
        only_cond = hint.mode == ControlMode.CONTROLNET and not bool(cond_rows.all())
        picked = cond_rows if only_cond else torch.ones_like(cond_rows)
        count = int(picked.sum())
        if count == 0:
            return None
        param = next(net.parameters())
        on_net = {"device": param.device, "dtype": param.dtype}
        added = bound.get("added_cond_kwargs")
        timestep = _rows(bound["timestep"], picked, rows)
        call: dict[str, Any] = {
            "sample": _rows(sample, picked, rows)[:, : net.config.in_channels].to(**on_net),
            "timestep": timestep.to(param.device) if isinstance(timestep, torch.Tensor) else timestep,
            "encoder_hidden_states": _rows(bound["encoder_hidden_states"], picked, rows).to(**on_net),
            "controlnet_cond": image.to(**on_net).expand(count, -1, -1, -1),
            "conditioning_scale": 1.0,
            "return_dict": False,
        }
        if isinstance(added, dict) and added:
            call["added_cond_kwargs"] = {k: _rows(v, picked, rows).to(**on_net) for k, v in added.items()}
        with torch.no_grad():
            down, mid = net(**call)
        residuals = [*down, mid]
        scales = _scales(hint, len(residuals))
        out = []
        for residual, scale in zip(residuals, scales, strict=True):
            residual = residual * scale
            if hint.mask is not None:
                mask = F.interpolate(hint.mask.float(), size=residual.shape[-2:], mode="bilinear")
                residual = residual * mask.to(device=residual.device, dtype=residual.dtype)
            if only_cond:
                full = residual.new_zeros((rows, *residual.shape[1:]))
                full[picked] = residual
                residual = full
            out.append(residual.to(device=sample.device, dtype=sample.dtype))
        return out[:-1], out[-1]


def _rows(value: Any, picked: torch.Tensor, rows: int) -> Any:
    if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == rows:
        return value[picked.to(value.device)]
    return value


def _scales(hint: ControlHint, count: int) -> list[float]:
    if hint.mode == ControlMode.PROMPT:
        return [hint.weight * SOFT_INJECTION ** float(count - 1 - i) for i in range(count)]
    return [hint.weight] * count


def _same_aspect(a: Sequence[int], b: Sequence[int]) -> bool:
    """Whether two (h, w) sizes are the same shape up to scale (within a pixel's rounding)."""
    return abs(a[0] * b[1] - a[1] * b[0]) <= max(a[0], a[1], b[0], b[1])


def embedding_factor(net: Any) -> int:
    """How much a ControlNet's hint embedding downsamples the control image (8 for SD's)."""
    channels = getattr(net.config, "conditioning_embedding_out_channels", (16, 32, 96, 256))
    return int(2 ** (len(channels) - 1))


@contextmanager
def controlled(
    unet: torch.nn.Module, hints: Sequence[ControlHint], progress: Progress, *, batch: int
) -> Iterator[ControlHook]:
    """While inside, every call of ``unet`` gets the residuals of ``hints`` (module docstring)."""
    hook = ControlHook(unet, hints, progress, batch)
    handle = unet.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield hook
    finally:
        handle.remove()
