"""A1111's NGMS (``s_min_uncond``, "negative guidance minimum sigma") as UNet hooks.

A1111's CFG denoiser counts its calls from 0; on every odd-numbered call whose sigma is below
``s_min_uncond`` it drops the unconditional half of the batch, and the cond prediction stands in
for the uncond one, so the guided result of that call is the cond prediction alone.

The stock diffusers pipelines batch ``[uncond, cond]`` into one UNet call and then apply
``uncond + cfg * (cond - uncond)``. On a skipped call the pre-hook cuts every batched input to
its cond half (half the UNet work) and the forward hook hands back ``[cond, cond]``, for which the
pipeline's own formula gives ``cond``. Under AND (``engine.composable``), whose hook runs after
this one, the first part's cond stands in for the uncond, as in A1111's ``combine_denoised``.

Calls of any other batch size (no CFG, AND's extra part evaluations) are left alone and not
counted.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any

import torch

from sdgate.engine.composable import slice_batch


def sigma_at(alphas_cumprod: torch.Tensor, timestep: float) -> float:
    """The sigma of a (possibly fractional) timestep: k-diffusion's ``t_to_sigma``, log-linear
    between the model's discrete sigmas."""
    log_sigmas = (((1 - alphas_cumprod) / alphas_cumprod) ** 0.5).double().log()
    t = min(max(float(timestep), 0.0), len(log_sigmas) - 1.0)
    low = int(t)
    high = min(low + 1, len(log_sigmas) - 1)
    frac = t - low
    return float(((1 - frac) * log_sigmas[low] + frac * log_sigmas[high]).exp())


def current_sigma(scheduler: Any, timestep: Any) -> float:
    """The sigma the model is being evaluated at: the scheduler's own where it keeps sigmas and
    knows its step, else (DDIM, PLMS, LCM, a first call before the step is known) the timestep's."""
    sigmas = getattr(scheduler, "sigmas", None)
    index = getattr(scheduler, "step_index", None)
    if isinstance(sigmas, torch.Tensor) and index is not None and 0 <= int(index) < len(sigmas):
        interpolated = getattr(scheduler, "sigmas_interpol", None)  # DPM2's midpoint evaluations
        if interpolated is not None and not getattr(scheduler, "state_in_first_order", True):
            return float(interpolated[int(index)])
        return float(sigmas[int(index)])
    t = timestep.flatten()[0] if isinstance(timestep, torch.Tensor) else timestep
    return sigma_at(scheduler.alphas_cumprod, float(t))


class SkipUncond:
    """The pre-hook and forward hook pair; ``calls`` and ``skipped`` count the guided calls."""

    def __init__(self, pipe: Any, s_min_uncond: float, batch: int, start: int = 0) -> None:
        self.pipe = pipe
        self.s_min_uncond = s_min_uncond
        self.batch = batch
        self.calls = start  # A1111's denoiser step counter
        self.skipped = 0
        self._cut = False

    def before(self, module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        sample = args[0] if args else kwargs.get("sample")
        size = 2 * self.batch
        if not isinstance(sample, torch.Tensor) or sample.shape[0] != size:
            return None
        index = self.calls
        self.calls += 1
        timestep = args[1] if len(args) > 1 else kwargs.get("timestep")
        if index % 2 == 0 or current_sigma(self.pipe.scheduler, timestep) >= self.s_min_uncond:
            return None
        self._cut = True
        self.skipped += 1
        cond = slice(self.batch, size)  # diffusers batches [uncond, cond]
        return slice_batch(args, size, cond), slice_batch(kwargs, size, cond)

    def after(self, module: Any, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> Any:
        if not self._cut:
            return None
        self._cut = False
        if isinstance(output, tuple):
            return (torch.cat([output[0], output[0]]), *output[1:])
        output.sample = torch.cat([output.sample, output.sample])
        return output


@contextmanager
def skipping_uncond(pipe: Any, s_min_uncond: float, batch: int, *, start: int = 0) -> Iterator[SkipUncond]:
    """While inside, ``pipe``'s UNet skips the uncond half on A1111's NGMS steps."""
    hooks = SkipUncond(pipe, s_min_uncond, batch, start)
    unet = pipe.unet
    # First in line: AND's forward hook must see the doubled output.
    pre = unet.register_forward_pre_hook(hooks.before, with_kwargs=True, prepend=True)
    post = unet.register_forward_hook(hooks.after, with_kwargs=True, prepend=True)
    try:
        yield hooks
    finally:
        pre.remove()
        post.remove()


def maybe_skipping_uncond(
    pipe: Any, s_min_uncond: float, batch: int, *, start: int = 0
) -> AbstractContextManager[Any]:
    """``skipping_uncond`` when NGMS is on; nothing at all (no hooks) when ``s_min_uncond`` is 0."""
    if s_min_uncond <= 0:
        return nullcontext()
    return skipping_uncond(pipe, s_min_uncond, batch, start=start)


def infotext_params(s_min_uncond: float) -> dict[str, object]:
    return {"NGMS": s_min_uncond} if s_min_uncond > 0 else {}
