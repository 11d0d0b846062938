"""A1111 sampler and schedule names -> a fresh diffusers scheduler for one job.

One table (``SAMPLERS``) says which diffusers class and options run each A1111 v1.10 sampler;
``SPACINGS`` and ``SIGMA_FLAGS`` say how each schedule type is expressed (a timestep spacing, a
sigma flag, or a custom sigma list). Where diffusers has no equivalent, the nearest is used and
``SchedulerPlan.notes`` says so; the engine writes that into the infotext ("Sampler note") and the
log. Nothing is substituted silently.

Schedulers hold per-call state, so ``build_scheduler`` is called for every pipeline call.
"""

from __future__ import annotations

import copy
import importlib.util
import inspect
import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from types import MappingProxyType
from typing import Any

import diffusers
import numpy as np
import torch
from diffusers.schedulers.scheduling_euler_discrete import (
    EulerDiscreteScheduler,
    EulerDiscreteSchedulerOutput,
)
from diffusers.utils.torch_utils import randn_tensor

from sdgate.core.errors import InvalidRequest
from sdgate.core.samplers import AUTOMATIC, get_scheduler
from sdgate.engine.common import concrete_schedule

# k-diffusion samplers discretise with model_wrap.get_sigmas (timesteps 999..0, "linspace"); A1111's
# timesteps samplers (DDIM, PLMS, UniPC) use range(0, 1000, 1000 // n) + 1 ("leading", offset 1).
LINSPACE, LEADING, TRAILING = "linspace", "leading", "trailing"
HAS_TORCHSDE = importlib.util.find_spec("torchsde") is not None
SigmaMaker = Callable[[int, float, float], np.ndarray]  # (steps, sigma_min, sigma_max) -> sigmas


def _frozen(**kwargs: Any) -> Mapping[str, Any]:
    return MappingProxyType(kwargs)


@dataclass(frozen=True)
class SamplerSpec:
    scheduler_class: str  # a diffusers class name, or one of ours (``EulerAncestralScheduler``)
    options: Mapping[str, Any] = field(default_factory=_frozen)
    automatic_spacing: str = LINSPACE  # what "automatic" means when the sampler has no default
    note: str | None = None  # set when this is the nearest stand-in, not the sampler itself
    fixed_schedule: bool = False  # A1111 ignores the schedule for this sampler (timesteps samplers)


_DPM2M = _frozen(algorithm_type="dpmsolver++", solver_order=2)
_SDE2M = _frozen(algorithm_type="sde-dpmsolver++", solver_order=2)
# Plain DPM-Solver cannot step to sigma 0; A1111's DPM fast also stops at sigma_min.
_DPM_SOLVER3 = _frozen(algorithm_type="dpmsolver", solver_order=3, final_sigmas_type="sigma_min")

SAMPLERS: Mapping[str, SamplerSpec] = MappingProxyType(
    {
        "DPM++ 2M": SamplerSpec("DPMSolverMultistepScheduler", _DPM2M),
        "DPM++ SDE": SamplerSpec("DPMSolverSDEScheduler"),
        "DPM++ 2M SDE": SamplerSpec("DPMSolverMultistepScheduler", _SDE2M),
        "DPM++ 2M SDE Heun": SamplerSpec(
            "DPMSolverMultistepScheduler", _frozen(**_SDE2M, solver_type="heun")
        ),
        "DPM++ 2S a": SamplerSpec(
            "DPMSolverSinglestepScheduler",
            _DPM2M,
            note="DPM++ 2S a is not in diffusers; ran DPM++ 2S (singlestep, no ancestral noise)",
        ),
        "DPM++ 3M SDE": SamplerSpec(
            "DPMSolverMultistepScheduler", _frozen(algorithm_type="sde-dpmsolver++", solver_order=3)
        ),
        "Euler a": SamplerSpec("EulerAncestralScheduler"),
        "Euler": SamplerSpec("EulerDiscreteScheduler"),
        "LMS": SamplerSpec("LMSDiscreteScheduler"),
        "Heun": SamplerSpec("HeunDiscreteScheduler"),
        "DPM2": SamplerSpec("KDPM2DiscreteScheduler"),
        "DPM2 a": SamplerSpec("KDPM2AncestralDiscreteScheduler"),
        "DPM fast": SamplerSpec(
            "DPMSolverSinglestepScheduler",
            _DPM_SOLVER3,
            note="DPM fast is not in diffusers; ran DPM-Solver (singlestep, order 3)",
        ),
        "DPM adaptive": SamplerSpec(
            "DPMSolverSinglestepScheduler",
            _DPM_SOLVER3,
            note="DPM adaptive is not in diffusers; ran DPM-Solver (singlestep, order 3, fixed steps)",
        ),
        "Restart": SamplerSpec(
            "HeunDiscreteScheduler",
            note="Restart is not in diffusers; ran Heun on the same schedule",
        ),
        "DDIM": SamplerSpec("DDIMScheduler", automatic_spacing=LEADING, fixed_schedule=True),
        "DDIM CFG++": SamplerSpec(
            "DDIMScheduler",
            automatic_spacing=LEADING,
            fixed_schedule=True,
            note="DDIM CFG++ is not in diffusers; ran DDIM",
        ),
        "PLMS": SamplerSpec("PNDMScheduler", _frozen(skip_prk_steps=True), LEADING, fixed_schedule=True),
        # A1111's UniPC defaults (bh1, order 3). It ends at the last timestep, not at sigma 0, and
        # diffusers' bh1 turns NaN stepping to sigma 0 anyway.
        "UniPC": SamplerSpec(
            "UniPCMultistepScheduler",
            _frozen(solver_type="bh1", solver_order=3, final_sigmas_type="sigma_min"),
            LEADING,
            fixed_schedule=True,
        ),
        "LCM": SamplerSpec("LCMScheduler", automatic_spacing=LEADING, fixed_schedule=True),
    }
)

# Schedule type -> scheduler config. A sigma flag needs the class to support it; the custom sigma
# lists go through the Karras hook (see ``_install_sigmas``).
SPACINGS = {
    "uniform": LINSPACE,
    "normal": LINSPACE,
    "sgm_uniform": TRAILING,
    "simple": TRAILING,
    "ddim": LEADING,
}
SIGMA_FLAGS = {
    "karras": "use_karras_sigmas",
    "exponential": "use_exponential_sigmas",
    "polyexponential": "use_exponential_sigmas",  # at its default rho of 1 it *is* exponential
    "beta": "use_beta_sigmas",
    "kl_optimal": "use_karras_sigmas",
    "align_your_steps": "use_karras_sigmas",
}
ALL_FLAGS = ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas")

# Align Your Steps tables (A1111 ``sd_schedulers``), log-linearly interpolated to the step count.
AYS_SD1 = (14.615, 6.475, 3.861, 2.697, 1.886, 1.396, 0.963, 0.652, 0.399, 0.152, 0.029)
AYS_SDXL = (14.615, 6.315, 3.771, 2.181, 1.342, 0.862, 0.555, 0.380, 0.234, 0.113, 0.029)


@dataclass
class SchedulerPlan:
    scheduler: Any
    sampler: str  # the A1111 name that was asked for (and is reported)
    schedule: str  # the canonical schedule that ran ("automatic" for samplers without a default)
    notes: list[str] = field(default_factory=list)

    @property
    def schedule_label(self) -> str:
        return get_scheduler(self.schedule).label


class EulerAncestralScheduler(EulerDiscreteScheduler):
    """A1111's Euler a (k-diffusion ``sample_euler_ancestral``) on EulerDiscreteScheduler's sigmas.

    diffusers' own EulerAncestralDiscreteScheduler supports neither Karras/exponential/custom sigma
    schedules nor eta, both of which A1111 offers for Euler a.
    """

    eta: float = 1.0
    s_noise: float = 1.0

    def step(  # type: ignore[override]
        self,
        model_output: torch.Tensor,
        timestep: float | torch.Tensor,
        sample: torch.Tensor,
        generator: torch.Generator | list[torch.Generator] | None = None,
        return_dict: bool = True,
    ) -> EulerDiscreteSchedulerOutput | tuple[torch.Tensor, torch.Tensor]:
        if self.step_index is None:
            self._init_step_index(timestep)
        index = int(self.step_index)
        x = sample.to(torch.float32)
        sigma, sigma_next = self.sigmas[index], self.sigmas[index + 1]
        if self.config.get("prediction_type") == "v_prediction":
            denoised = model_output * (-sigma / (sigma**2 + 1) ** 0.5) + x / (sigma**2 + 1)
        else:
            denoised = x - sigma * model_output
        sigma_up = min(
            float(sigma_next),
            self.eta * float((sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2) ** 0.5),
        )
        sigma_down = (float(sigma_next) ** 2 - sigma_up**2) ** 0.5
        prev = x + (x - denoised) / sigma * (sigma_down - sigma)
        if sigma_up > 0:
            noise = randn_tensor(
                model_output.shape, dtype=torch.float32, device=x.device, generator=generator
            )
            prev = prev + noise * self.s_noise * sigma_up
        self._step_index = index + 1  # type: ignore[assignment]
        prev = prev.to(model_output.dtype)
        if not return_dict:
            return prev, denoised
        return EulerDiscreteSchedulerOutput(prev_sample=prev, pred_original_sample=denoised)


def scheduler_class(name: str) -> Any:
    if name == "EulerAncestralScheduler":
        return EulerAncestralScheduler
    return getattr(diffusers, name)  # type: ignore[no-any-return]


def _accepts(cls: type, kwarg: str) -> bool:
    return kwarg in inspect.signature(cls.__init__).parameters  # type: ignore[misc]


def build_scheduler(
    sampler: str,
    schedule: str,
    base_config: Mapping[str, Any],
    *,
    family: str | None = None,
    seeds: list[int] | None = None,
    eta: float | None = None,
    s_noise: float | None = None,
    s_churn: float | None = None,
) -> SchedulerPlan:
    """A new scheduler running ``sampler`` with ``schedule``, over the model's own noise schedule.

    ``base_config`` is the pipeline's scheduler config (betas, prediction type). ``seeds`` feed
    the Brownian noise of DPM++ SDE, one tree per image, as A1111 does. ``eta`` and ``s_noise``
    reach Euler a (and eta DDIM, per call); where A1111 would use a value we cannot, a note says
    so. Unknown names are a client error: the dialects canonicalise names before a job is stored.
    """
    spec = SAMPLERS.get(sampler)
    if spec is None:
        raise InvalidRequest(f"unknown sampler {sampler!r}", field="sampler")
    try:
        get_scheduler(schedule)
    except KeyError:
        raise InvalidRequest(f"unknown scheduler {schedule!r}", field="scheduler") from None
    notes = [spec.note] if spec.note else []
    cls_name = spec.scheduler_class
    if cls_name == "DPMSolverSDEScheduler" and not HAS_TORCHSDE:
        cls_name = "DPMSolverSinglestepScheduler"
        notes.append("DPM++ SDE needs torchsde, which is not installed; ran DPM++ 2S (singlestep)")
    cls = scheduler_class(cls_name)
    schedule = concrete_schedule(sampler, schedule)
    kwargs: dict[str, Any] = {**spec.options, **{f: False for f in ALL_FLAGS if _accepts(cls, f)}}
    kwargs["timestep_spacing"] = spec.automatic_spacing
    custom: SigmaMaker | None = None
    if schedule != AUTOMATIC:
        schedule, custom = _apply_schedule(sampler, spec, cls, schedule, kwargs, notes, family)
    scheduler = _new_scheduler(cls_name, dict(base_config), kwargs)
    if custom is not None:
        _install_sigmas(scheduler, custom)
    if isinstance(scheduler, EulerAncestralScheduler):
        scheduler.eta = 1.0 if eta is None else eta
        scheduler.s_noise = 1.0 if s_noise is None else s_noise
    if seeds is not None and hasattr(scheduler, "noise_sampler_seed"):
        scheduler.noise_sampler_seed = list(seeds)
    notes += _unused_options(sampler, scheduler, eta=eta, s_noise=s_noise, s_churn=s_churn)
    return SchedulerPlan(scheduler, sampler, schedule, notes)


# Samplers whose A1111 function takes eta / s_noise / s_churn (a1111_api.md §2.1).
ETA_SAMPLERS = {
    "Euler a",
    "DPM2 a",
    "DPM++ 2S a",
    "DPM++ SDE",
    "DPM++ 2M SDE",
    "DPM++ 2M SDE Heun",
    "DPM++ 3M SDE",
    "DPM fast",
    "DPM adaptive",
    "DDIM",
    "DDIM CFG++",
}
S_NOISE_SAMPLERS = ETA_SAMPLERS - {"DDIM", "DDIM CFG++"} | {"Euler", "Heun", "DPM2"}
S_CHURN_SAMPLERS = {"Euler", "Heun", "DPM2"}


def _unused_options(
    sampler: str, scheduler: Any, *, eta: float | None, s_noise: float | None, s_churn: float | None
) -> list[str]:
    """Notes for sampler options A1111 would apply here and this engine cannot (yet)."""
    ours = isinstance(scheduler, EulerAncestralScheduler)
    takes_eta = ours or "eta" in inspect.signature(scheduler.step).parameters
    notes = []
    if eta is not None and eta != 1.0 and sampler in ETA_SAMPLERS and not takes_eta:
        notes.append(f"eta {eta:g} is not supported for {sampler}; ran with its default")
    if s_noise is not None and s_noise != 1.0 and sampler in S_NOISE_SAMPLERS and not ours:
        notes.append(f"s_noise {s_noise:g} is not supported for {sampler}; ran with 1")
    if s_churn and sampler in S_CHURN_SAMPLERS:
        notes.append(f"s_churn {s_churn:g} is not supported for {sampler}; ran with 0")
    return notes


def _new_scheduler(cls_name: str, config: dict[str, Any], kwargs: dict[str, Any]) -> Any:
    """A fresh scheduler: a copy of a pristine one built once per class, config and options.

    Some schedulers (KDPM2...) precompute 1000-step tables in ``__init__``, half a second of
    Python; a deep copy of the untouched instance is the same object in a millisecond. The options
    go in as ``from_config`` keywords: merged into the config, diffusers would drop those the
    base config lists under ``_use_default_values``.
    """
    key = json.dumps([config, kwargs], sort_keys=True, default=str)
    return copy.deepcopy(_pristine_scheduler(cls_name, key))


@lru_cache(maxsize=128)
def _pristine_scheduler(cls_name: str, key: str) -> Any:
    config, kwargs = json.loads(key)
    return scheduler_class(cls_name).from_config(config, **kwargs)


def _apply_schedule(
    sampler: str,
    spec: SamplerSpec,
    cls: type,
    schedule: str,
    kwargs: dict[str, Any],
    notes: list[str],
    family: str | None,
) -> tuple[str, SigmaMaker | None]:
    """Put ``schedule`` into ``kwargs``; returns the schedule that will really run, and custom sigmas."""
    label = get_scheduler(schedule).label
    if spec.fixed_schedule and schedule not in SPACINGS and not _accepts(cls, SIGMA_FLAGS[schedule]):
        notes.append(f"{sampler} uses its own timesteps; the {label} schedule was ignored")
        return AUTOMATIC, None
    if schedule in SPACINGS:
        kwargs["timestep_spacing"] = SPACINGS[schedule]
        return schedule, None
    flag = SIGMA_FLAGS[schedule]
    if not _accepts(cls, flag):
        notes.append(f"the {label} schedule is not available for {sampler}; used its default schedule")
        return AUTOMATIC, None
    kwargs[flag] = True
    if schedule == "kl_optimal":
        return schedule, kl_optimal_sigmas
    if schedule == "align_your_steps":
        table = AYS_SDXL if family == "sdxl" else AYS_SD1
        return schedule, lambda n, _lo, _hi: loglinear_sigmas(table, n)
    return schedule, None


def _install_sigmas(scheduler: Any, make: SigmaMaker) -> None:
    """Make ``set_timesteps`` use our sigma list instead of Karras's.

    Every sigma-based diffusers scheduler turns its sigmas into timesteps after calling
    ``_convert_to_karras`` (when ``use_karras_sigmas``), so replacing that one method on this
    instance gives KL Optimal and Align Your Steps to all of them; ``test_schedulers`` checks the
    sigmas really arrive.
    """
    sigma_min, sigma_max = _sigma_range(scheduler)

    def convert(in_sigmas: Any, num_inference_steps: int | None = None) -> np.ndarray:
        n = num_inference_steps or len(in_sigmas)
        return np.clip(make(n, sigma_min, sigma_max), sigma_min, sigma_max).astype(np.float64)

    scheduler._convert_to_karras = convert


def _sigma_range(scheduler: Any) -> tuple[float, float]:
    alphas = scheduler.alphas_cumprod.double()
    sigmas = ((1 - alphas) / alphas) ** 0.5
    return float(sigmas[0]), float(sigmas[-1])


def kl_optimal_sigmas(n: int, sigma_min: float, sigma_max: float) -> np.ndarray:
    """A1111's KL Optimal: tan of an arctan-linear ramp; ``n`` sigmas (diffusers appends the 0)."""
    t = np.arange(n) / n
    return np.tan(t * math.atan(sigma_min) + (1 - t) * math.atan(sigma_max))


def loglinear_sigmas(table: tuple[float, ...], n: int) -> np.ndarray:
    """A1111's ``loglinear_interp`` of an Align Your Steps table to ``n`` sigmas."""
    if n == len(table):
        return np.array(table, dtype=np.float64)
    xs = np.linspace(0, 1, len(table))
    ys = np.log(np.array(table[::-1]))
    interp = np.exp(np.interp(np.linspace(0, 1, n), xs, ys))
    return np.ascontiguousarray(interp[::-1])
