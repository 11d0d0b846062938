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

from sdgate.core.errors import InvalidRequest
from sdgate.core.samplers import AUTOMATIC, get_scheduler
from sdgate.engine.common import concrete_schedule
from sdgate.engine.kdiffusion import (
    DPM2AncestralScheduler,
    DPM2ChurnScheduler,
    DPMSolverSDENoiseScheduler,
    EulerAncestralScheduler,
    EulerChurnScheduler,
    HeunChurnScheduler,
    MultistepSDEScheduler,
)

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
        "DPM++ SDE": SamplerSpec("DPMSolverSDENoiseScheduler"),
        "DPM++ 2M SDE": SamplerSpec("MultistepSDEScheduler", _SDE2M),
        "DPM++ 2M SDE Heun": SamplerSpec("MultistepSDEScheduler", _frozen(**_SDE2M, solver_type="heun")),
        "DPM++ 2S a": SamplerSpec(
            "DPMSolverSinglestepScheduler",
            _DPM2M,
            note="DPM++ 2S a is not in diffusers; ran DPM++ 2S (singlestep, no ancestral noise)",
        ),
        "DPM++ 3M SDE": SamplerSpec(
            "MultistepSDEScheduler", _frozen(algorithm_type="sde-dpmsolver++", solver_order=3)
        ),
        "Euler a": SamplerSpec("EulerAncestralScheduler"),
        "Euler": SamplerSpec("EulerChurnScheduler"),
        "LMS": SamplerSpec("LMSDiscreteScheduler"),
        "Heun": SamplerSpec("HeunChurnScheduler"),
        "DPM2": SamplerSpec("DPM2ChurnScheduler"),
        "DPM2 a": SamplerSpec("DPM2AncestralScheduler"),
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
    # A1111's infotext entries for the sampler options that ran ("Eta", "Sigma churn", ...).
    params: dict[str, object] = field(default_factory=dict)

    @property
    def schedule_label(self) -> str:
        return get_scheduler(self.schedule).label


@dataclass(frozen=True)
class SamplerOptions:
    """A1111's sampler options for one job, with A1111's defaults (``s_tmax`` 0 or None: no limit).

    ``eta`` is None until the sampler's own default is known (1 for k-diffusion samplers, 0 for
    DDIM: A1111's ``eta_ancestral`` and ``eta_ddim``).
    """

    eta: float | None = None
    s_churn: float = 0.0
    s_tmin: float = 0.0
    s_tmax: float = math.inf
    s_noise: float = 1.0

    @classmethod
    def of(
        cls,
        eta: float | None = None,
        s_churn: float | None = None,
        s_tmin: float | None = None,
        s_tmax: float | None = None,
        s_noise: float | None = None,
    ) -> SamplerOptions:
        return cls(
            eta=eta,
            s_churn=s_churn or 0.0,
            s_tmin=s_tmin or 0.0,
            s_tmax=s_tmax or math.inf,
            s_noise=1.0 if s_noise is None else s_noise,
        )


OURS: Mapping[str, type] = MappingProxyType(
    {
        cls.__name__: cls
        for cls in (
            EulerAncestralScheduler,
            EulerChurnScheduler,
            HeunChurnScheduler,
            DPM2ChurnScheduler,
            DPM2AncestralScheduler,
            DPMSolverSDENoiseScheduler,
            MultistepSDEScheduler,
        )
    }
)


def scheduler_class(name: str) -> Any:
    return OURS.get(name) or getattr(diffusers, name)


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
    s_tmin: float | None = None,
    s_tmax: float | None = None,
) -> SchedulerPlan:
    """A new scheduler running ``sampler`` with ``schedule``, over the model's own noise schedule.

    ``base_config`` is the pipeline's scheduler config (betas, prediction type). ``seeds`` feed
    the Brownian noise of DPM++ SDE, one tree per image, as A1111 does. ``eta`` and the ``s_*``
    options go where A1111's sampler function takes them (``SAMPLER_OPTIONS``; DDIM's eta is
    passed per call); where A1111 would use a value and this scheduler cannot, a note says so.
    Unknown names are a client error: the dialects canonicalise names before a job is stored.
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
    if cls_name == "DPMSolverSDENoiseScheduler" and not HAS_TORCHSDE:
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
    if seeds is not None and hasattr(scheduler, "noise_sampler_seed"):
        scheduler.noise_sampler_seed = list(seeds)
    options = SamplerOptions.of(eta, s_churn, s_tmin, s_tmax, s_noise)
    params = apply_options(sampler, scheduler, options, notes)
    return SchedulerPlan(scheduler, sampler, schedule, notes, params)


# Which A1111 sampler takes which option (k-diffusion's ``eta`` argument and A1111's
# ``sampler_extra_params``; DDIM's eta is ``eta_ddim``). Euler a takes eta but not s_noise.
_CHURN = ("s_churn", "s_tmin", "s_tmax", "s_noise")
SAMPLER_OPTIONS: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {
        "Euler": _CHURN,
        "Heun": _CHURN,
        "DPM2": _CHURN,
        "Euler a": ("eta",),
        "DPM2 a": ("eta", "s_noise"),
        "DPM++ 2S a": ("eta", "s_noise"),
        "DPM++ SDE": ("eta", "s_noise"),
        "DPM++ 2M SDE": ("eta", "s_noise"),
        "DPM++ 2M SDE Heun": ("eta", "s_noise"),
        "DPM++ 3M SDE": ("eta", "s_noise"),
        "DPM fast": ("eta", "s_noise"),
        "DPM adaptive": ("eta",),
        "DDIM": ("eta",),
        "DDIM CFG++": ("eta",),
    }
)
DDIM_ETA = frozenset({"DDIM", "DDIM CFG++"})  # default 0, infotext "Eta DDIM"; passed per call
# option -> (A1111's infotext key, default)
OPTION_INFOTEXT = {
    "eta": ("Eta", 1.0),
    "s_churn": ("Sigma churn", 0.0),
    "s_tmin": ("Sigma tmin", 0.0),
    "s_tmax": ("Sigma tmax", math.inf),
    "s_noise": ("Sigma noise", 1.0),
}


def apply_options(
    sampler: str, scheduler: Any, options: SamplerOptions, notes: list[str]
) -> dict[str, object]:
    """Set what ``sampler`` takes of ``options`` on ``scheduler``; returns the infotext entries.

    As A1111, an option is written to the infotext only for a sampler that takes it and only when
    it differs from the default. One this scheduler cannot honour is noted instead (and not
    written, since it did not run).
    """
    params: dict[str, object] = {}
    applies: frozenset[str] = getattr(scheduler, "APPLIES", frozenset())
    for name in SAMPLER_OPTIONS.get(sampler, ()):
        key, default = OPTION_INFOTEXT[name]
        value = getattr(options, name)
        if name == "eta" and sampler in DDIM_ETA:
            key, default = "Eta DDIM", 0.0
            if value is not None and value != default:  # the engine passes it to DDIM's step
                params[key] = value
            continue
        if value is None or value == default:
            continue
        if name in applies:
            setattr(scheduler, name, value)
            params[key] = value
        else:
            notes.append(f"{name} {value:g} is not supported for {sampler}; ran with {default:g}")
    return params


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


def eta_kwargs(plan: SchedulerPlan, eta: float | None) -> dict[str, Any]:
    """DDIM takes eta per call (A1111's eta_ddim, default 0); other samplers get it at build time."""
    if eta is not None and "eta" in inspect.signature(plan.scheduler.step).parameters:
        return {"eta": eta}
    return {}
