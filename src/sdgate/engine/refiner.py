"""A1111's refiner: sampling moves to a second checkpoint part-way through the steps.

1. The main model runs the first ``ceil(refiner_switch_at * steps)`` steps of a pass (the steps
   the pass really runs: img2img and hires count their own). This is A1111's "Refiner switch by
   sampling steps"; A1111's default measures the share by timestep instead, so the infotext says
   which rule ran. A switch that would come after the last step does not happen, and no refiner
   appears in the infotext (A1111 writes it only when it switched).
2. The same scheduler object goes on with the refiner: its step index, multistep history,
   Brownian noise and the images' generators all carry over, so only the model changes. The
   refiner's own pipeline runs the remaining timesteps (``_Resumed``), conditioned by its own text
   encoders, with the prompt schedule where the main model left it.
3. Latents carry over as they are when both models share a latent space; otherwise (SD 1.x base,
   SDXL refiner; another VAE factor) they are decoded by the main model's VAE and encoded by the
   refiner's, as they stand at the switch.
4. Progress counts on across the switch (one ``StepTracker`` sees steps 1..N); interrupt and skip
   work in either part, and the final latents belong to the refiner (its VAE decodes them).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, cast

import torch
from PIL import Image

from sdgate.core.engine import StepAction
from sdgate.core.errors import InvalidRequest
from sdgate.core.models import ModelCatalog
from sdgate.core.requests import GenerationRequest
from sdgate.engine import embeddings, ngms
from sdgate.engine.common import StepTracker
from sdgate.engine.prompts import PromptPlan, prompt_plan
from sdgate.engine.sampling import StepCallback, decode_latents
from sdgate.engine.tiling import seamless

_EPSILON = 1e-9  # 0.7 * 10 is 7.000000000000001 in floats: still 7 steps on the main model


def check(request: GenerationRequest) -> None:
    """A refiner needs a switch point strictly inside the steps."""
    if request.refiner is None:
        return
    at = request.refiner_switch_at
    if at is None or not 0.0 < at < 1.0:
        raise InvalidRequest(
            f"refiner_switch_at: must be between 0 and 1, exclusive, with a refiner (got {at})",
            field="refiner_switch_at",
        )


def switch_step(switch_at: float, steps: int) -> int:
    """Steps run by the main model: A1111 switches once ``done / steps >= switch_at``."""
    return max(1, math.ceil(switch_at * steps - _EPSILON))


def latent_space(pipe: Any, family: str | None) -> tuple[object, ...]:
    """What two models must share for latents to carry over untouched."""
    cfg = pipe.vae.config
    return (
        family == "sdxl",
        cfg.latent_channels,
        len(cfg.block_out_channels),  # the VAE's downsampling factor
        cfg.scaling_factor,
        getattr(cfg, "shift_factor", None),
        tuple(getattr(cfg, "latents_mean", None) or ()),
    )


@torch.no_grad()
def encode_pictures(pipe: Any, pictures: list[Image.Image]) -> torch.Tensor:
    """PIL images -> latents in ``pipe``'s space (the inverse of ``sampling.decode_latents``)."""
    vae = pipe.vae
    cfg = vae.config
    x = pipe.image_processor.preprocess(pictures).to(device=vae.device, dtype=vae.dtype)
    z = vae.encode(x).latent_dist.mode()
    mean, std = getattr(cfg, "latents_mean", None), getattr(cfg, "latents_std", None)
    if mean is not None and std is not None:
        shape = (1, len(mean), 1, 1)
        return (
            (z - torch.tensor(mean).view(shape).to(z))
            * cfg.scaling_factor
            / torch.tensor(std).view(shape).to(z)
        )
    return (z - (getattr(cfg, "shift_factor", None) or 0.0)) * cfg.scaling_factor  # type: ignore[no-any-return]


def convert_latents(
    latents: torch.Tensor, source: Any, source_family: str | None, target: Any, target_family: str | None
) -> torch.Tensor:
    """``latents`` of ``source`` as ``target``'s latents: as they are, or through both VAEs."""
    if latent_space(source, source_family) == latent_space(target, target_family):
        return latents
    return encode_pictures(target, decode_latents(source, latents))


class FirstPart:
    """The main model's part of a pass: a ``StepTracker`` that also ends the pipeline's loop at
    the switch (``stop`` loop iterations), while the job's own answer stays "continue"."""

    def __init__(self, tracker: StepTracker, stop: int) -> None:
        self.tracker = tracker
        self.stop = stop
        self.total = 0  # loop iterations of the whole pass, as the pipeline reports them
        self.switched = False

    @property
    def action(self) -> StepAction:
        return self.tracker.action

    def advance(self, done: int, total: int, preview: Any = None) -> StepAction:
        self.total = total
        action = self.tracker.advance(done, total, preview)
        if action == StepAction.CONTINUE and self.stop <= done < total:
            self.switched = True
            return StepAction.INTERRUPT  # StepCallback ends the loop; the scheduler keeps its state
        return action


def reporting(first: FirstPart | None, tracker: StepTracker) -> StepTracker:
    """What a pass's step callback reports to: ``first`` where the pass switches (it has the
    tracker's ``advance`` and ``action``), else ``tracker``."""
    return cast(StepTracker, first) if first is not None else tracker


@dataclass
class Refiner:
    model: Any  # the engine's LoadedModel of the refiner checkpoint
    switch_at: float

    @property
    def pipeline(self) -> Any:
        return self.model.pipeline

    @property
    def family(self) -> str | None:
        return self.model.loaded.family  # type: ignore[no-any-return]

    def infotext_params(self) -> dict[str, object]:
        info = self.model.info
        return {
            "Refiner": f"{info.stem} [{info.short_hash}]",
            "Refiner switch at": self.switch_at,
            "Refiner switch by sampling steps": True,  # A1111's key for the rule used here
        }

    def first_part(self, tracker: StepTracker, steps: int, order: int) -> FirstPart | None:
        """The tracker for the main model's part of a pass of ``steps`` steps; None: no switch."""
        main = switch_step(self.switch_at, steps)
        if main >= steps:
            return None
        return FirstPart(tracker, main * max(1, int(order)))  # whole steps of 2nd-order samplers

    def continue_sampling(
        self,
        first: FirstPart,
        latents: torch.Tensor,
        *,
        pipe: Any,
        family: str | None,
        request: GenerationRequest,
        prompt_steps: int,
        width: int,
        height: int,
        generators: list[torch.Generator],
        extra: dict[str, Any],
        catalog: ModelCatalog,
        hires_of: int | None = None,
    ) -> torch.Tensor:
        """The rest of the pass on the refiner, from ``pipe``'s scheduler as the switch left it."""
        scheduler = pipe.scheduler
        start = len(scheduler.timesteps) - first.total + first.stop  # img2img runs a tail
        target = self.pipeline
        latents = convert_latents(latents, pipe, family, target, self.family)
        _match_prediction(scheduler, self.model.base_scheduler_config)
        embeds = embeddings.for_pipeline(catalog, target)
        prompts = prompt_plan(
            target, self.family, request, prompt_steps, hires_of=hires_of, embeddings=embeds
        )
        step = first.stop * prompt_steps // first.total  # the sampler step the refiner starts at
        callback = _shifted(prompts.wrap(StepCallback(first.tracker, self.family)), first.stop, first.total)
        own = target.scheduler
        target.scheduler = _Resumed(scheduler, start)
        try:
            # NGMS counts on from the main model's calls, as A1111's one denoiser does.
            skipping = ngms.maybe_skipping_uncond(
                target, request.s_min_uncond, prompts.batch, start=first.stop
            )
            with prompts.applied(target), seamless(target, request.tiling), skipping:
                prompts._step = step  # noqa: SLF001 - AND parts start where the main model left off
                out = target(
                    **_kwargs_at(prompts, step),
                    height=height,
                    width=width,
                    num_inference_steps=prompt_steps,
                    guidance_scale=request.cfg_scale,
                    latents=latents.to(device=target.unet.device, dtype=target.unet.dtype),
                    generator=generators,
                    output_type="latent",
                    callback_on_step_end=callback,
                    callback_on_step_end_tensor_inputs=prompts.tensor_inputs,
                    **extra,
                ).images
        finally:
            target.scheduler = own
        return out  # type: ignore[no-any-return]


class _Resumed:
    """A scheduler part-way through its loop, as the refiner's pipeline sees it: ``set_timesteps``
    keeps the state, the loop runs the timesteps left, and latents come in as they are."""

    init_noise_sigma = 1.0
    begin_index = None

    def __init__(self, scheduler: Any, start: int) -> None:
        self._scheduler = scheduler
        self.timesteps = scheduler.timesteps[start:]

    def set_timesteps(self, *args: Any, **kwargs: Any) -> None:
        pass

    def set_begin_index(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __getattr__(self, name: str) -> Any:
        return getattr(self._scheduler, name)


class _WholeLoop:
    """What the step callbacks see of the refiner's pipeline: the whole pass's loop, so progress
    and the prompt schedule count on from the switch."""

    def __init__(self, pipe: Any, total: int) -> None:
        self._pipe = pipe
        self.scheduler = SimpleNamespace(timesteps=range(total), begin_index=0)

    @property
    def _interrupt(self) -> bool:
        return bool(self._pipe._interrupt)

    @_interrupt.setter
    def _interrupt(self, value: bool) -> None:
        self._pipe._interrupt = value


def _shifted(callback: Any, offset: int, total: int) -> Any:
    def on_step_end(pipe: Any, index: int, timestep: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
        return callback(_WholeLoop(pipe, total), index + offset, timestep, kwargs)  # type: ignore[no-any-return]

    return on_step_end


def _kwargs_at(prompts: PromptPlan, step: int) -> dict[str, Any]:
    """The prompt arguments at sampler step ``step`` (prompt editing may have switched by then)."""
    if not prompts.scheduled:
        return prompts.kwargs
    switch, batch = prompts.switch_for(step), prompts.batch
    kwargs = dict(prompts.kwargs)
    kwargs["prompt_embeds"] = switch.parts[0].embeds.expand(batch, -1, -1)
    kwargs["negative_prompt_embeds"] = switch.negative.embeds.expand(batch, -1, -1)
    if prompts.sdxl:
        kwargs["pooled_prompt_embeds"] = switch.parts[0].pooled.expand(batch, -1)  # type: ignore[union-attr]
        kwargs["negative_pooled_prompt_embeds"] = switch.negative.pooled.expand(batch, -1)  # type: ignore[union-attr]
    return kwargs


def _match_prediction(scheduler: Any, refiner_config: dict[str, Any]) -> None:
    """An epsilon base and a v-prediction refiner (SD 2.x 768-v): the scheduler reads the refiner's
    output as the refiner means it."""
    want = refiner_config.get("prediction_type")
    config = getattr(scheduler, "config", None)
    if want and config is not None and config.get("prediction_type", want) != want:
        scheduler.register_to_config(prediction_type=want)
