"""Composable diffusion (``a cat :1.2 AND a dog``) as a UNet forward hook.

A1111 combines the AND parts as ``uncond + sum_i w_i * cfg * (cond_i - uncond)``. The stock
diffusers pipelines already compute ``uncond + cfg * (cond - uncond)`` from one batched UNet call
whose second half is conditioned on the first part; the hook lets that call run, evaluates the
UNet once more per further part on the same (second-half) inputs, and hands the pipeline
``[uncond, uncond + sum_i w_i * (cond_i - uncond)]``: the pipeline's own guidance step then gives
exactly A1111's formula, for txt2img, img2img, inpaint, ControlNet residuals and SDXL alike.

Without classifier-free guidance (cfg <= 1 batches no uncond) the parts are averaged by weight.
On a step where NGMS (``engine.ngms``) ran only the cond half, the inputs hold one half and the
output two copies of the cond: the first part's cond stands in for the uncond, as in A1111.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class Part:
    """One AND part at the current step: its text conditioning, SDXL pooled vector, and weight."""

    embeds: torch.Tensor  # (1, tokens, width)
    pooled: torch.Tensor | None
    weight: float


def slice_batch(value: Any, size: int, part: slice) -> Any:
    """``value`` with every tensor whose batch is ``size`` cut to ``part`` (dicts and tuples too)."""
    if isinstance(value, torch.Tensor):
        return value[part] if value.dim() > 0 and value.shape[0] == size else value
    if isinstance(value, dict):
        return {k: slice_batch(v, size, part) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(slice_batch(v, size, part) for v in value)
    return value


class ComposableHook:
    """Forward hook combining AND parts; ``parts()`` gives the current step's parts (first = the
    one the pipeline itself conditions on)."""

    def __init__(self, unet: torch.nn.Module, batch: int, parts: Callable[[], list[Part]]) -> None:
        self.unet = unet
        self.batch = batch
        self.parts = parts
        # The class's signature: an offload hook may have replaced the instance's forward.
        self._signature = inspect.signature(type(unet).forward)
        self._inside = False

    def __call__(self, module: Any, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> Any:
        if self._inside:
            return None
        bound = dict(self._signature.bind(module, *args, **kwargs).arguments)
        bound.pop("self", None)
        sample: torch.Tensor = bound["sample"]
        eps = output[0] if isinstance(output, tuple) else output.sample
        size, batch = sample.shape[0], self.batch
        if size == 2 * batch:
            uncond, first, half = eps[:batch], eps[batch:], slice(batch, 2 * batch)
        elif size == batch and eps.shape[0] == 2 * batch:  # NGMS ran the cond half alone: the
            uncond, first, half = eps[:batch], eps[batch:], slice(0, batch)  # cond stands in
        elif size == batch:
            uncond, first, half = None, eps, slice(0, batch)
        else:  # not a call this hook was set up for
            return None
        parts = self.parts()
        preds = [first]
        for part in parts[1:]:
            preds.append(self._evaluate(bound, size, half, part))
        combined = _combine(uncond, preds, [p.weight for p in parts])
        new = combined if uncond is None else torch.cat([uncond, combined])
        if isinstance(output, tuple):
            return (new, *output[1:])
        output.sample = new
        return output

    def _evaluate(self, bound: dict[str, Any], size: int, half: slice, part: Part) -> torch.Tensor:
        call = {k: slice_batch(v, size, half) for k, v in bound.items() if k != "kwargs"}
        call.update(bound.get("kwargs", {}))
        embeds = part.embeds.to(dtype=call["encoder_hidden_states"].dtype)
        call["encoder_hidden_states"] = embeds.expand(self.batch, -1, -1)
        added = call.get("added_cond_kwargs")
        if part.pooled is not None and isinstance(added, dict) and "text_embeds" in added:
            text_embeds = added["text_embeds"]
            call["added_cond_kwargs"] = {
                **added,
                "text_embeds": part.pooled.to(text_embeds.dtype).expand(self.batch, -1),
            }
        call["return_dict"] = False
        self._inside = True
        try:
            return self.unet(**call)[0]  # type: ignore[no-any-return]
        finally:
            self._inside = False


def _combine(uncond: torch.Tensor | None, preds: list[torch.Tensor], weights: list[float]) -> torch.Tensor:
    if uncond is None:
        total = sum(weights)
        scale = 1.0 / total if total else 1.0
        return sum((w * scale * p for w, p in zip(weights, preds, strict=True)), torch.zeros_like(preds[0]))
    delta = sum((w * (p - uncond) for w, p in zip(weights, preds, strict=True)), torch.zeros_like(uncond))
    return uncond + delta


@contextmanager
def composed(unet: torch.nn.Module, batch: int, parts: Callable[[], list[Part]]) -> Iterator[None]:
    """While inside, ``unet``'s output combines the AND parts ``parts()`` returns."""
    handle = unet.register_forward_hook(ComposableHook(unet, batch, parts), with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()
