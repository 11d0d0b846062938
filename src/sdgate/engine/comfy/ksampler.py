"""KSampler / KSamplerAdvanced: the denoising loop, on the engine's UNet and our schedulers.

One loop serves both nodes (ComfyUI's ``common_ksampler``):

- The schedule has ``total`` steps and the loop runs steps ``start..end``: KSampler with
  ``denoise`` < 1 runs the last ``steps`` of ``int(steps / denoise)`` (ComfyUI's shortened
  schedule); KSamplerAdvanced runs ``start_at_step..end_at_step`` of ``steps``.
- Noise, as ComfyUI: one CPU generator seeded with the seed draws the noise for the whole latent
  batch at once (so image i of a batch is not the image of seed + i alone); the sampler's own
  step noise (ancestral, SDE) comes from the same generator afterwards.
- ``add_noise``: the latent is noised to the first step's noise level (``latent + sigma * noise``
  in k-diffusion space, as ComfyUI; schedulers working in the VP space get the same point). Off,
  the latent is taken as already noised, in k-diffusion space (what ``return_with_leftover_noise``
  hands on), so a two-stage KSamplerAdvanced chain works across samplers.
- ``force_full_denoise`` (KSamplerAdvanced without leftover noise, ending early): the last step
  lands on the model's clean estimate, as ComfyUI's last sigma of 0.
- ``noise_mask`` (SetLatentNoiseMask, VAEEncodeForInpaint): after every step the unmasked part is
  put back to the original latent noised to the next level; the last step leaves it clean.
- Conditioning: every entry of the positive and negative lists is evaluated; the entries of one
  side are averaged with their strengths (and areas) as weights (ComfyUI's ``calc_cond_batch``:
  ConditioningCombine of full-size entries averages their predictions; a ConditioningSetArea
  entry runs on its crop of the latent and counts only there, feathered), then classifier-free
  guidance. ``cfg`` 1 skips the negative, as ComfyUI.
- ControlNets (``controlnets``): entries carrying the same ControlNets share one UNet batch, run
  inside ``engine.controlnet.controlled`` with their hints; each step first tells the hints where
  it lies on the model's noise schedule (their start/end percents).
"""

from __future__ import annotations

import inspect
import math
import time
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from sdgate.core.errors import InvalidRequest
from sdgate.engine.comfy.controlnets import SamplerControls, infotext_values
from sdgate.engine.comfy.executor import RunContext
from sdgate.engine.comfy.values import CondEntry, Conditioning, Latent, ModelHandle, SampleInfo
from sdgate.engine.sampling import check_finite
from sdgate.engine.schedulers import build_scheduler


def our_sampler(sampler_name: str, scheduler: str) -> tuple[str, str]:
    """ComfyUI's sampler and scheduler names as ours (``core.comfy.nodes.sampler_for``)."""
    from sdgate.core.comfy.nodes import sampler_for

    try:
        return sampler_for(sampler_name, scheduler)
    except KeyError:
        raise InvalidRequest(
            f"sampler {sampler_name!r} with scheduler {scheduler!r} is not supported", field="prompt"
        ) from None


def sample(
    ctx: RunContext,
    handle: ModelHandle,
    *,
    seed: int,
    steps: int,
    cfg: float,
    sampler_name: str,
    scheduler: str,
    positive: Conditioning,
    negative: Conditioning,
    latent: Latent,
    denoise: float = 1.0,
    start: int | None = None,
    end: int | None = None,
    add_noise: bool = True,
    force_full_denoise: bool = True,
    apply_model: Any,
    keep: Sequence[str] = (),
) -> Latent:
    """The sampled latent. ``start``/``end`` None: KSampler's ``denoise`` decides the range.
    ``apply_model(handle)`` is a context manager that patches the handle's LoRAs into the UNet;
    ``keep``: the engine cache keys of the models the prompt holds (loading a ControlNet evicts none)."""
    began = time.perf_counter()
    model = handle.model
    pipe, family = model.pipeline, model.loaded.family
    factor = model.loaded.vae_scale_factor
    device = ctx.engine.device
    unet = pipe.unet
    ours, schedule = our_sampler(sampler_name, scheduler)
    # 1. The range of the schedule to run.
    if start is None:
        if denoise <= 0:
            return latent
        total = steps if denoise >= 0.9999 else max(steps, int(steps / denoise))
        start, end = total - steps, total
    else:
        total = steps
        end = min(steps if end is None else end, steps)
        if start >= end:
            return latent
    assert end is not None
    plan = build_scheduler(ours, schedule, model.base_scheduler_config, family=family, seeds=[seed])
    for note in plan.notes:
        ctx.note(note)
    sched = plan.scheduler
    sched.set_timesteps(total, device=device)
    timesteps = sched.timesteps
    order = int(getattr(sched, "order", 1) or 1)
    begin, stop = start * order, min(len(timesteps), end * order)
    if begin >= len(timesteps):
        return latent
    if hasattr(sched, "set_begin_index"):
        sched.set_begin_index(begin)
    # 2. The latent, its noise and mask.
    x = _materialize(latent, unet.config.in_channels, factor).to(device=device, dtype=torch.float32)
    if x.shape[1] != unet.config.in_channels:
        raise InvalidRequest(
            f"the latent has {x.shape[1]} channels; model {model.info.name} takes {unet.config.in_channels}",
            field="prompt",
        )
    generator = torch.Generator("cpu").manual_seed(seed % 2**64)
    noise = torch.randn(x.shape, generator=generator, dtype=torch.float32).to(device)
    space = _Space(sched, timesteps, model.base_scheduler_config.get("prediction_type", "epsilon"))
    original = x.clone()
    if add_noise:
        x = space.noised(x, noise, begin)
    elif not space.k_diffusion:
        x = space.from_k(x, begin)
    mask = _latent_mask(latent.noise_mask, x) if latent.noise_mask is not None else None
    # 3. The conditioning as one UNet batch.
    batch = _CondBatch(positive, negative if cfg != 1.0 else (), x, factor, pipe, family, cfg)
    if any(entry.controls for entry in batch.entries):
        batch.controls = SamplerControls(ctx, batch.entries, model, list(keep), space.alphas)
    step_kwargs = {"generator": generator} if _takes(sched.step, "generator") else {}
    n = end - start
    reported = 0
    with torch.inference_mode(), apply_model(handle):
        for i in range(begin, stop):
            t = timesteps[i]
            if batch.controls is not None:
                batch.controls.percent.at(space.alpha(i))
            model_in = sched.scale_model_input(x, t)
            prediction = batch.predict(unet, model_in, t)
            x0 = space.x0(x, prediction, i)
            if force_full_denoise and i == stop - 1 and end < total:
                x = x0
            else:
                x = sched.step(prediction, t, x, **step_kwargs, return_dict=True).prev_sample.float()
            if mask is not None:
                after = len(timesteps) if i == stop - 1 and force_full_denoise else i + 1
                x = mask * x + (1 - mask) * space.noised(original, noise, after)
            step = min(n, -(-(i - begin + 1) * n // max(1, stop - begin)))
            if step > reported:
                reported = step
                ctx.report(step, n, _preview(pipe, x0[:1].detach().clone(), family))
    if end < total and not force_full_denoise and not space.k_diffusion:
        x = space.to_k(x, stop)  # leftover noise is handed on in k-diffusion space
    check_finite(x, ours)
    ctx.sample_s += time.perf_counter() - began
    width, height = x.shape[-1] * factor, x.shape[-2] * factor
    info = SampleInfo(
        prompt=_texts(positive), negative_prompt=_texts(negative), seed=seed, steps=steps, cfg=cfg,
        sampler=ours, schedule=plan.schedule, comfy_sampler=sampler_name, comfy_scheduler=scheduler,
        width=width, height=height, model_name=model.info.name, model_stem=model.info.stem,
        model_hash=model.info.short_hash, denoise=denoise if start is not None else 1.0,
        loras=tuple(f"{lora.name}: {lora.strength:g}" for lora in handle.loras), notes=tuple(plan.notes),
        controlnets=infotext_values(positive),
    )  # fmt: skip
    ctx.last = info
    return Latent(width, height, x.shape[0], x, latent.noise_mask, factor, info)


def _preview(pipe: Any, x0: torch.Tensor, family: str | None) -> Any:
    """The step's lazy preview: of the model's clean estimate (as ComfyUI), drawn the engine's way."""
    try:
        from sdgate.engine import previews
    except ImportError:  # an engine without configurable previews: the cheap projection
        from sdgate.engine.sampling import latent_preview  # type: ignore[attr-defined]

        return lambda: latent_preview(x0, family)
    return previews.for_step(pipe, x0, family)


def _texts(cond: Conditioning) -> str:
    return " AND ".join(entry.text for entry in cond)


def _takes(fn: Any, name: str) -> bool:
    try:
        return name in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


def _materialize(latent: Latent, channels: int, factor: int) -> torch.Tensor:
    if latent.samples is not None:
        return latent.samples  # type: ignore[no-any-return]
    return torch.zeros(
        latent.batch, channels, max(1, latent.height // factor), max(1, latent.width // factor)
    )


def _latent_mask(mask: Any, x: torch.Tensor) -> torch.Tensor:
    """A noise mask ``[B, H, W]`` / ``[B, 1, H, W]`` at the latent's size (bilinear, as ComfyUI)."""
    m = mask.float()
    if m.dim() == 2:
        m = m[None]
    if m.dim() == 3:
        m = m[:, None]
    m = F.interpolate(m, size=x.shape[-2:], mode="bilinear").to(x.device)
    if m.shape[0] != x.shape[0]:
        m = m.repeat(math.ceil(x.shape[0] / m.shape[0]), 1, 1, 1)[: x.shape[0]]
    return m.clamp(0, 1)


class _Space:
    """Where a scheduler's samples live: k-diffusion's ``x0 + sigma * eps`` (Euler, Heun, ...) or
    the VP space ``sqrt(a) x0 + sqrt(1 - a) eps`` (DDIM, DPM++ 2M, UniPC, ...)."""

    def __init__(self, sched: Any, timesteps: torch.Tensor, prediction: str) -> None:
        self.sched = sched
        self.timesteps = timesteps
        self.prediction = prediction
        self.k_diffusion = float(getattr(sched, "init_noise_sigma", 1.0)) > 1.0 + 1e-3
        self.alphas = sched.alphas_cumprod.double().cpu()

    def alpha(self, index: int) -> float:
        """The signal level ``a`` at loop index ``index``; 1.0 past the end (clean)."""
        if self.k_diffusion:
            sigmas = self.sched.sigmas
            if index >= len(sigmas):
                return 1.0
            sigma = float(sigmas[index])
            return 1.0 / (sigma * sigma + 1.0)
        if index >= len(self.timesteps):
            return 1.0
        t = int(round(float(self.timesteps[index])))
        return float(self.alphas[min(max(t, 0), len(self.alphas) - 1)])

    def noised(self, clean: torch.Tensor, noise: torch.Tensor, index: int) -> torch.Tensor:
        a = self.alpha(index)
        if self.k_diffusion:
            return clean + noise * math.sqrt((1.0 - a) / a)
        return clean * math.sqrt(a) + noise * math.sqrt(1.0 - a)

    def from_k(self, x: torch.Tensor, index: int) -> torch.Tensor:
        return x * math.sqrt(self.alpha(index))

    def to_k(self, x: torch.Tensor, index: int) -> torch.Tensor:
        return x / math.sqrt(self.alpha(index))

    def x0(self, x: torch.Tensor, prediction: torch.Tensor, index: int) -> torch.Tensor:
        """The model's clean estimate from the sample at ``index`` and its (guided) output."""
        a = self.alpha(index)
        vp = x * math.sqrt(a) if self.k_diffusion else x
        if self.prediction == "v_prediction":
            return vp * math.sqrt(a) - prediction * math.sqrt(1.0 - a)
        if self.prediction == "sample":
            return prediction
        return (vp - prediction * math.sqrt(1.0 - a)) / math.sqrt(a)


class _CondBatch:
    """Every conditioning entry of both sides, and how to combine the UNet's outputs.

    Full-size entries go through the UNet as one batch; an area entry (ConditioningSetArea) runs
    on its own crop of the latent, as ComfyUI, and counts only there, its edges inside the picture
    feathered over 8 latent pixels (ComfyUI's ``get_area_and_mult``).
    """

    def __init__(
        self,
        positive: Conditioning,
        negative: Conditioning,
        x: torch.Tensor,
        factor: int,
        pipe: Any,
        family: str | None,
        cfg: float,
    ) -> None:
        if not positive:
            raise InvalidRequest("a sampler's positive conditioning is empty", field="prompt")
        self.entries: list[CondEntry] = [*positive, *negative]
        self.n_pos = len(positive)
        self.cfg = cfg
        self.batch = x.shape[0]
        dtype, device = pipe.unet.dtype, x.device
        length = math.lcm(*(int(e.embeds.shape[1]) for e in self.entries))
        self.rows = [_repeat_to(e.embeds, length).to(device=device, dtype=dtype) for e in self.entries]
        self.areas = [_latent_area(e, x, factor) for e in self.entries]
        self.weights = [_weight(e, area, x) for e, area in zip(self.entries, self.areas, strict=True)]
        self.full = [i for i, area in enumerate(self.areas) if area is None]
        self.controls: SamplerControls | None = None  # set when an entry carries ControlNets
        self.pooled: list[torch.Tensor] | None = None
        self.size = (x.shape[-2] * factor, x.shape[-1] * factor)
        if family == "sdxl":
            self.pooled = [
                (e.pooled if e.pooled is not None else torch.zeros(1, 1280)).to(device=device, dtype=dtype)
                for e in self.entries
            ]

    def _call(self, unet: Any, model_in: torch.Tensor, t: Any, which: list[int]) -> list[torch.Tensor]:
        """The UNet's output for ``model_in`` under each entry of ``which``, in one batch."""
        b = self.batch
        embeds = torch.cat([self.rows[i].expand(b, -1, -1) for i in which])
        kwargs: dict[str, Any] = {}
        if self.pooled is not None:
            h, w = self.size
            ids = torch.tensor([[h, w, 0, 0, h, w]], device=embeds.device, dtype=embeds.dtype)
            kwargs["added_cond_kwargs"] = {
                "text_embeds": torch.cat([self.pooled[i].expand(b, -1) for i in which]),
                "time_ids": ids.expand(b * len(which), -1),
            }
        latent_in = model_in.repeat(len(which), 1, 1, 1).to(unet.dtype)
        out = unet(latent_in, t, encoder_hidden_states=embeds, return_dict=False, **kwargs)[0].float()
        return list(out.chunk(len(which)))

    def _groups(self, which: list[int]) -> list[list[int]]:
        """``which`` split into runs of entries under the same ControlNets (one UNet batch each)."""
        groups: dict[tuple[int, ...], list[int]] = {}
        for i in which:
            groups.setdefault(tuple(id(use) for use in self.entries[i].controls), []).append(i)
        return list(groups.values())

    def _guided_call(self, unet: Any, model_in: torch.Tensor, t: Any, which: list[int]) -> list[torch.Tensor]:
        """``_call`` with the ControlNets the entries of ``which`` (all alike) carry."""
        uses = self.entries[which[0]].controls
        if not uses or self.controls is None:
            return self._call(unet, model_in, t, which)
        size = (int(model_in.shape[-2]), int(model_in.shape[-1]))
        with self.controls.around(uses, size, self.batch):
            return self._call(unet, model_in, t, which)

    def predict(self, unet: Any, model_in: torch.Tensor, t: Any) -> torch.Tensor:
        preds: list[torch.Tensor | None] = [None] * len(self.entries)
        for group in self._groups(self.full):
            for i, pred in zip(group, self._guided_call(unet, model_in, t, group), strict=True):
                preds[i] = pred
        for i, area in enumerate(self.areas):
            if area is None:
                continue
            y0, y1, x0, x1 = area
            pred = torch.zeros(model_in.shape, device=model_in.device)
            pred[..., y0:y1, x0:x1] = self._guided_call(unet, model_in[..., y0:y1, x0:x1], t, [i])[0]
            preds[i] = pred
        done = [p for p in preds if p is not None]
        assert len(done) == len(preds)
        positive = self._combine(done[: self.n_pos], self.weights[: self.n_pos])
        if len(done) == self.n_pos:
            return positive
        negative = self._combine(done[self.n_pos :], self.weights[self.n_pos :])
        return negative + self.cfg * (positive - negative)

    @staticmethod
    def _combine(preds: list[torch.Tensor], weights: list[torch.Tensor | None]) -> torch.Tensor:
        if len(preds) == 1 and weights[0] is None:
            return preds[0]
        total = torch.zeros_like(preds[0])
        count = torch.full_like(preds[0], 1e-37)
        for pred, weight in zip(preds, weights, strict=True):
            w = weight if weight is not None else 1.0
            total = total + pred * w
            count = count + w
        return total / count


FEATHER = 8  # latent pixels: ComfyUI's ``rr``


def _latent_area(entry: CondEntry, x: torch.Tensor, factor: int) -> tuple[int, int, int, int] | None:
    """An area entry's (y0, y1, x0, x1) in latent pixels, clipped to the latent; None: the whole."""
    if entry.area is None:
        return None
    h, w = x.shape[-2:]
    aw, ah, ax, ay = (v // factor for v in entry.area)
    y0, x0 = min(max(ay, 0), h - 1), min(max(ax, 0), w - 1)
    return y0, min(h, y0 + max(1, ah)), x0, min(w, x0 + max(1, aw))


def _weight(entry: CondEntry, area: tuple[int, int, int, int] | None, x: torch.Tensor) -> torch.Tensor | None:
    """An entry's weight map ``[1, 1, h, w]`` (strength, over its area, feathered); None: 1 everywhere."""
    if area is None and entry.strength == 1.0:
        return None
    h, w = x.shape[-2:]
    weight = torch.zeros(1, 1, h, w, device=x.device)
    if area is None:
        return weight.fill_(entry.strength)
    y0, y1, x0, x1 = area
    mult = torch.full((y1 - y0, x1 - x0), entry.strength, device=x.device)
    ramp = [(t + 1) / FEATHER for t in range(FEATHER)]
    for t, r in enumerate(ramp):  # edges inside the picture fade in (ComfyUI's feathering)
        if y0 > 0 and t < mult.shape[0]:
            mult[t] *= r
        if y1 < h and t < mult.shape[0]:
            mult[-1 - t] *= r
        if x0 > 0 and t < mult.shape[1]:
            mult[:, t] *= r
        if x1 < w and t < mult.shape[1]:
            mult[:, -1 - t] *= r
    weight[0, 0, y0:y1, x0:x1] = mult
    return weight


def _repeat_to(embeds: torch.Tensor, length: int) -> torch.Tensor:
    reps = length // int(embeds.shape[1])
    return embeds.repeat(1, reps, 1) if reps > 1 else embeds
