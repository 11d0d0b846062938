"""ControlNetLoader, ControlNetApply and ControlNetApplyAdvanced on the diffusers engine, and the
ControlNets a sampler runs (``SamplerControls``), through ``engine.controlnet``'s UNet hook.

As ComfyUI: the loader names a file of ``controlnet/`` (or A1111's ``ControlNet/``); an apply node
takes an already-made control map (an IMAGE: no preprocessing) and adds the ControlNet to every
entry of the conditioning it is given, after those already there (chained apply nodes stack:
multi-ControlNet, their residuals summed); strength 0 returns the conditioning unchanged.
ControlNetApply guides the conditioning it is given (usually only the positive);
ControlNetApplyAdvanced puts the same ControlNet on the positive and the negative, guiding from
``start_percent`` to ``end_percent`` of the model's noise schedule (ComfyUI's percents: 0 is the
noisiest timestep, 1 clean; a KSampler at denoise < 1 starts part-way). Its optional ``vae`` is for
ControlNets that take latents (SD3, Flux); the SD 1.x / SDXL ControlNets we run take pixels, so it
is not used.

When a sampler runs, the UNet call for each group of entries that share the same ControlNets is
made inside ``controlled(unet, hints, ...)``: a positive guided by a ControlNet and a plain
negative (ControlNetApply) are two UNet calls, as in ComfyUI. The control map is fitted to the
latent's size times the net's own downsampling as ComfyUI does (centre crop to the aspect, then
nearest-exact); an area entry (ConditioningSetArea) gets the map fitted to its crop. The first
image of an IMAGE batch guides every latent of the batch.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sdgate.core.infotext import format_value
from sdgate.core.models import ASSET_DIRS
from sdgate.core.requests import ControlMode
from sdgate.engine import controlnet_units as units
from sdgate.engine.comfy.executor import RunContext
from sdgate.engine.comfy.values import CondEntry, Conditioning, ControlNetHandle, ControlUse, Pixels
from sdgate.engine.controlnet import ControlHint, controlled, embedding_factor
from sdgate.engine.controlnet_loading import ControlNetFile

# --- the nodes -----------------------------------------------------------------------------------


def controlnet_file(catalog: Any, name: str) -> Any:
    """The catalog's ControlNet file a ``control_net_name`` names (``NotFound`` naming it)."""
    from sdgate.engine.comfy.nodes import _find

    return _find(catalog.list_files("controlnet"), name, "ControlNet")


def controlnet_loader(b: Any, ctx: RunContext, args: dict[str, Any]) -> tuple[Any, ...]:
    name = str(args["control_net_name"])
    return (ControlNetHandle(name, controlnet_file(ctx.engine.catalog, name)),)


def _with(cond: Conditioning, use: ControlUse) -> Conditioning:
    return tuple(replace(entry, controls=(*entry.controls, use)) for entry in cond)


def _use(args: dict[str, Any], start: float = 0.0, end: float = 1.0) -> ControlUse:
    pixels: Pixels = args["image"]
    return ControlUse(args["control_net"], pixels.tensor, float(args.get("strength", 1.0)), start, end)


def controlnet_apply(b: Any, ctx: RunContext, args: dict[str, Any]) -> tuple[Any, ...]:
    cond: Conditioning = args["conditioning"]
    if float(args.get("strength", 1.0)) == 0.0:
        return (cond,)
    return (_with(cond, _use(args)),)


def controlnet_apply_advanced(b: Any, ctx: RunContext, args: dict[str, Any]) -> tuple[Any, ...]:
    positive: Conditioning = args["positive"]
    negative: Conditioning = args["negative"]
    if float(args.get("strength", 1.0)) == 0.0:
        return (positive, negative)
    use = _use(args, float(args.get("start_percent", 0.0)), float(args.get("end_percent", 1.0)))
    return (_with(positive, use), _with(negative, use))


NODES: dict[str, Any] = {
    "ControlNetLoader": controlnet_loader,
    "ControlNetApply": controlnet_apply,
    "ControlNetApplyAdvanced": controlnet_apply_advanced,
}


# --- a sampler's ControlNets ---------------------------------------------------------------------


class SchedulePercent:
    """ComfyUI's percent of the model's noise schedule at the step running (0: the noisiest
    timestep, 1: clean), from the step's noise level: a ControlNet guides while it lies in
    ``[start_percent, end_percent]`` (ComfyUI compares the sigmas of those percents)."""

    def __init__(self, alphas_cumprod: Any) -> None:
        a = np.asarray(alphas_cumprod, dtype=np.float64)
        self.log_sigmas = np.log(np.sqrt((1.0 - a) / a))
        self.value = 0.0

    def at(self, alpha: float) -> None:
        """The step about to run has signal level ``alpha`` (``sqrt(a) x0 + sqrt(1 - a) eps``)."""
        if alpha >= 1.0:
            self.value = 1.0
            return
        log_sigma = 0.5 * math.log((1.0 - alpha) / alpha)
        last = len(self.log_sigmas) - 1
        t = float(np.interp(log_sigma, self.log_sigmas, np.arange(last + 1)))
        self.value = 1.0 - t / max(1, last)

    def __call__(self, timestep: Any) -> float:
        return self.value


class SamplerControls:
    """The ControlNets of a sampler's conditioning entries: each net fetched once (``load_net``),
    each control map fitted once per latent size."""

    def __init__(
        self, ctx: RunContext, entries: Sequence[CondEntry], model: Any, keep: list[str], alphas_cumprod: Any
    ) -> None:
        self.ctx = ctx
        self.model = model
        self.unet = model.pipeline.unet
        self.keep = keep
        self.percent = SchedulePercent(alphas_cumprod)
        self.nets: dict[str, Any] = {}
        self.maps: dict[tuple[int, int, int], torch.Tensor] = {}
        for entry in entries:
            for use in entry.controls:
                self._net(use.net)

    def _net(self, handle: ControlNetHandle) -> Any:
        key = str(handle.file.path)
        net = self.nets.get(key)
        if net is None:
            net = self.nets[key] = load_net(self.ctx, handle, self.model, self.keep)
        return net

    def _map(self, use: ControlUse, height: int, width: int) -> torch.Tensor:
        """The control map ``(1, 3, height, width)`` in 0..1: ComfyUI's centre crop and nearest-exact."""
        from sdgate.engine.comfy.nodes import upscale

        key = (id(use), height, width)
        found = self.maps.get(key)
        if found is None:
            image = use.image[:1, ..., :3].permute(0, 3, 1, 2).float()
            found = self.maps[key] = upscale(image, width, height, "nearest-exact", "center").clamp(0, 1)
        return found

    def hints(self, controls: tuple[ControlUse, ...], latent_hw: tuple[int, int]) -> list[ControlHint]:
        out = []
        for use in controls:
            net = self._net(use.net)
            f = embedding_factor(net)
            image = self._map(use, latent_hw[0] * f, latent_hw[1] * f)
            hint = ControlHint(net, image, use.strength, use.start, use.end, ControlMode.BALANCED)
            out.append(hint)
        return out

    @contextmanager
    def around(
        self, controls: tuple[ControlUse, ...], latent_hw: tuple[int, int], batch: int
    ) -> Iterator[None]:
        """UNet calls inside get the residuals of ``controls`` (none: a plain call)."""
        if not controls:
            yield
            return
        with controlled(self.unet, self.hints(controls, latent_hw), self.percent, batch=batch):
            yield


def infotext_values(positive: Conditioning) -> tuple[str, ...]:
    """A1111's ``ControlNet i`` infotext values for the ControlNets guiding the positive prompt
    (each once, in the order they were applied; a map made beforehand: module ``none``)."""
    uses: dict[int, ControlUse] = {}
    for entry in positive:
        for use in entry.controls:
            uses.setdefault(id(use), use)
    return tuple(
        f"Module: none, Model: {weights_path(use.net.file).stem}, Weight: {format_value(use.strength)}, "
        f"Guidance Start: {format_value(use.start)}, Guidance End: {format_value(use.end)}"
        for use in uses.values()
    )


def weights_path(file: Any) -> Path:
    """What to load for a listed file: a diffusers folder's weight file (ComfyUI lists the files
    inside folders) loads as its folder, with its own ``config.json``."""
    path = Path(file.path)
    folder = path.parent
    if path.is_file() and (folder / "config.json").is_file() and folder.name not in ASSET_DIRS["controlnet"]:
        return folder
    return path


def load_net(ctx: RunContext, handle: ControlNetHandle, model: Any, keep: list[str]) -> Any:
    """The net of ``handle`` on the engine's device, through the engine's own ControlNet cache
    (``controlnet_units.net_for``: the key A1111 jobs use, so both share a loaded net; loaded now if
    absent, never evicting ``keep``, and added to it). A net made for another model family or size
    is refused naming both; the executor names the sampler node."""
    path = weights_path(handle.file)
    found = ControlNetFile(name=handle.name, relpath=str(handle.name), path=path)
    net, key = units.net_for(ctx.engine, found, model, keep, field="prompt")
    keep.append(key)
    return net
