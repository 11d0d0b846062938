"""A1111 v1.10.1 sampler and scheduler names, as data, and how a requested pair resolves.

The tables mirror ``modules/sd_samplers_kdiffusion.py``, ``sd_samplers_timesteps.py``,
``sd_samplers_lcm.py`` and ``sd_schedulers.py`` at v1.10.1, in ``/samplers`` and ``/schedulers``
order. Which diffusers scheduler runs a sampler is the engine's business; this module only names
things and resolves what clients send (``reference/a1111_api.md`` §2).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TypedDict

FALLBACK_SAMPLER = "DPM++ 2M"  # A1111's samplers[0]: what an unknown sampler name becomes
AUTOMATIC = "automatic"

OptionValue = str | bool


class SamplerItem(TypedDict):
    """One ``/samplers`` item."""

    name: str
    aliases: list[str]
    options: dict[str, str]


class SchedulerItem(TypedDict):
    """One ``/schedulers`` item."""

    name: str
    label: str
    aliases: list[str] | None
    default_rho: float
    need_inner_model: bool


@dataclass(frozen=True)
class Sampler:
    name: str
    aliases: tuple[str, ...]
    # As A1111 holds them (bools stay bools); ``listing()`` turns them into strings as its API does.
    options: Mapping[str, OptionValue] = field(default_factory=lambda: MappingProxyType({}))

    @property
    def default_scheduler(self) -> str | None:
        """The scheduler "Automatic" means for this sampler (a scheduler name), if it has one."""
        value = self.options.get("scheduler")
        return value if isinstance(value, str) else None

    @property
    def uses_ensd(self) -> bool:
        """Whether A1111 writes ``ENSD`` (eta noise seed delta) into the infotext for this sampler."""
        return self.options.get("uses_ensd") is True

    @property
    def second_order(self) -> bool:
        return self.options.get("second_order") is True

    def listing(self) -> SamplerItem:
        return {
            "name": self.name,
            "aliases": list(self.aliases),
            "options": {key: str(value) for key, value in self.options.items()},
        }


@dataclass(frozen=True)
class Scheduler:
    name: str
    label: str
    aliases: tuple[str, ...] | None = None
    default_rho: float = -1.0
    need_inner_model: bool = False

    def listing(self) -> SchedulerItem:
        return {
            "name": self.name,
            "label": self.label,
            "aliases": list(self.aliases) if self.aliases is not None else None,
            "default_rho": self.default_rho,
            "need_inner_model": self.need_inner_model,
        }


def _sampler(name: str, aliases: list[str], **options: OptionValue) -> Sampler:
    return Sampler(name, tuple(aliases), MappingProxyType(dict(options)))


_KARRAS, _EXPONENTIAL = "karras", "exponential"

SAMPLERS: tuple[Sampler, ...] = (
    _sampler("DPM++ 2M", ["k_dpmpp_2m"], scheduler=_KARRAS),
    _sampler("DPM++ SDE", ["k_dpmpp_sde"], scheduler=_KARRAS, second_order=True, brownian_noise=True),
    _sampler("DPM++ 2M SDE", ["k_dpmpp_2m_sde"], scheduler=_EXPONENTIAL, brownian_noise=True),
    # A1111 passes solver_type through the options, so /samplers shows it too.
    _sampler(
        "DPM++ 2M SDE Heun",
        ["k_dpmpp_2m_sde_heun"],
        scheduler=_EXPONENTIAL,
        brownian_noise=True,
        solver_type="heun",
    ),
    _sampler("DPM++ 2S a", ["k_dpmpp_2s_a"], scheduler=_KARRAS, uses_ensd=True, second_order=True),
    _sampler(
        "DPM++ 3M SDE",
        ["k_dpmpp_3m_sde"],
        scheduler=_EXPONENTIAL,
        discard_next_to_last_sigma=True,
        brownian_noise=True,
    ),
    _sampler("Euler a", ["k_euler_a", "k_euler_ancestral"], uses_ensd=True),
    _sampler("Euler", ["k_euler"]),
    _sampler("LMS", ["k_lms"]),
    _sampler("Heun", ["k_heun"], second_order=True),
    _sampler("DPM2", ["k_dpm_2"], scheduler=_KARRAS, discard_next_to_last_sigma=True, second_order=True),
    _sampler(
        "DPM2 a",
        ["k_dpm_2_a"],
        scheduler=_KARRAS,
        discard_next_to_last_sigma=True,
        uses_ensd=True,
        second_order=True,
    ),
    _sampler("DPM fast", ["k_dpm_fast"], uses_ensd=True),
    _sampler("DPM adaptive", ["k_dpm_ad"], uses_ensd=True),
    _sampler("Restart", ["restart"], scheduler=_KARRAS, second_order=True),
    _sampler("DDIM", ["ddim"]),
    _sampler("DDIM CFG++", ["ddim_cfgpp"]),
    _sampler("PLMS", ["plms"]),
    _sampler("UniPC", ["unipc"]),
    _sampler("LCM", ["k_lcm"]),
)

SCHEDULERS: tuple[Scheduler, ...] = (
    Scheduler("automatic", "Automatic"),
    Scheduler("uniform", "Uniform", need_inner_model=True),
    Scheduler("karras", "Karras", default_rho=7.0),
    Scheduler("exponential", "Exponential"),
    Scheduler("polyexponential", "Polyexponential", default_rho=1.0),
    Scheduler("sgm_uniform", "SGM Uniform", aliases=("SGMUniform",), need_inner_model=True),
    Scheduler("kl_optimal", "KL Optimal"),
    Scheduler("align_your_steps", "Align Your Steps"),
    Scheduler("simple", "Simple", need_inner_model=True),
    Scheduler("normal", "Normal", need_inner_model=True),
    Scheduler("ddim", "DDIM", need_inner_model=True),
    Scheduler("beta", "Beta", need_inner_model=True),
)

_SAMPLERS_BY_NAME = {s.name: s for s in SAMPLERS}
# Lenient lookups: any case, and aliases (``k_euler_a``), which A1111 1.10's API itself rejects.
_SAMPLERS_FOLDED = {key.casefold(): s for s in reversed(SAMPLERS) for key in (s.name, *s.aliases)}
_SCHEDULERS_BY_NAME = {s.name: s for s in SCHEDULERS}
_SCHEDULERS_EXACT = {**_SCHEDULERS_BY_NAME, **{s.label: s for s in SCHEDULERS}}
_SCHEDULERS_FOLDED = {
    key.casefold(): s for s in reversed(SCHEDULERS) for key in (s.label, s.name, *(s.aliases or ()))
}
# Longest first, so " SGM Uniform" is tried before " Uniform".
_SUFFIXES = sorted(((" " + key, s) for key, s in _SCHEDULERS_FOLDED.items()), key=lambda kv: -len(kv[0]))
# Pre-1.9 aliases carried the schedule as a suffix: k_dpmpp_2m_ka, k_dpmpp_2m_sde_exp.
_LEGACY_ALIAS_SUFFIXES = (("_ka", _KARRAS), ("_exp", _EXPONENTIAL))


@dataclass(frozen=True)
class SamplerChoice:
    """A resolved (sampler, scheduler) pair.

    ``scheduler`` is concrete when the sampler has a default ("automatic" became e.g. "karras"); it
    stays "automatic" only for samplers without one (Euler, LMS, DDIM, ...), which is what A1111's
    infotext then says (``Schedule type: Automatic``).
    """

    sampler: str  # canonical A1111 name, e.g. "DPM++ 2M"
    scheduler: str  # canonical scheduler name, e.g. "karras"
    scheduler_label: str  # e.g. "Karras"; what the infotext's "Schedule type" shows
    requested: str  # the sampler name as the client sent it ("" when it sent none)
    fell_back: bool = False  # the sampler name was unknown and became FALLBACK_SAMPLER
    requested_scheduler: str | None = None  # the scheduler as sent
    scheduler_fell_back: bool = False  # a non-empty scheduler was unknown and became automatic


def samplers_listing() -> list[SamplerItem]:
    """``GET /sdapi/v1/samplers`` items, exactly as A1111 serializes them."""
    return [s.listing() for s in SAMPLERS]


def schedulers_listing() -> list[SchedulerItem]:
    """``GET /sdapi/v1/schedulers`` items, exactly as A1111 serializes them."""
    return [s.listing() for s in SCHEDULERS]


def find_sampler(name: str) -> Sampler | None:
    """A sampler by exact name, else by any-case name or alias (``k_euler_a``)."""
    return _SAMPLERS_BY_NAME.get(name) or _SAMPLERS_FOLDED.get(name.strip().casefold())


def find_scheduler(name: str) -> Scheduler | None:
    """A scheduler by exact name or label (A1111), else by any-case name, label or alias."""
    return _SCHEDULERS_EXACT.get(name) or _SCHEDULERS_FOLDED.get(name.strip().casefold())


def get_sampler(name: str) -> Sampler:
    """The table row of a canonical sampler name; KeyError for anything else."""
    return _SAMPLERS_BY_NAME[name]


def get_scheduler(name: str) -> Scheduler:
    """The table row of a canonical scheduler name; KeyError for anything else."""
    return _SCHEDULERS_BY_NAME[name]


def is_known_sampler(name: str) -> bool:
    """True when ``name`` names a sampler, alone or with a schedule suffix ("DPM++ 2M Karras")."""
    return _find_sampler_and_suffix(name)[0] is not None


def resolve_sampler(
    sampler_name: str | None, scheduler: str | None, *, default_sampler: str = "Euler"
) -> SamplerChoice:
    """Resolve what a client sent, following A1111 v1.10.1's ``get_sampler_and_scheduler``.

    1. An empty sampler name means ``default_sampler`` (the API's ``sampler_index`` default, "Euler").
    2. ``scheduler`` is looked up by exact name or label ("karras", "Karras"); unknown or empty means
       automatic.
    3. A sampler name ending in " <scheduler label, name or alias>" has that suffix stripped (the
       longest that matches), and the suffix wins over ``scheduler``: "DPM++ 2M Karras" ->
       (DPM++ 2M, karras). This is how pre-1.9 combined names keep working.
    4. An unknown sampler becomes "DPM++ 2M" (A1111 does so silently): ``fell_back`` is set and
       ``requested`` keeps the original, so the caller can log it or, when strict, reject it.
    5. "automatic" becomes the sampler's default scheduler where it has one: plain "DPM++ 2M" runs
       Karras on 1.10, as it does in A1111.

    More lenient than A1111, without changing any answer where A1111 finds the sampler: names,
    labels, aliases and suffixes also match in any case (Open WebUI sends ``scheduler: "normal"``;
    some clients lowercase sampler names), sampler aliases are accepted (``k_euler_a``; A1111
    1.10's API takes exact names only), as are pre-1.9 aliases with a schedule suffix
    (``k_dpmpp_2m_ka``), and scheduler aliases ("SGMUniform") in the ``scheduler`` field.
    """
    requested = sampler_name or ""
    name = requested.strip() or default_sampler

    found_scheduler = find_scheduler(scheduler) if scheduler else None
    scheduler_fell_back = bool(scheduler and scheduler.strip()) and found_scheduler is None

    sampler, suffix_scheduler = _find_sampler_and_suffix(name)
    if suffix_scheduler is not None:
        found_scheduler = suffix_scheduler
        scheduler_fell_back = False
    fell_back = sampler is None
    if sampler is None:
        sampler = _SAMPLERS_BY_NAME[FALLBACK_SAMPLER]

    if found_scheduler is None or found_scheduler.name == AUTOMATIC:
        default = sampler.default_scheduler
        found_scheduler = _SCHEDULERS_BY_NAME[default] if default else _SCHEDULERS_BY_NAME[AUTOMATIC]

    return SamplerChoice(
        sampler=sampler.name,
        scheduler=found_scheduler.name,
        scheduler_label=found_scheduler.label,
        requested=requested,
        fell_back=fell_back,
        requested_scheduler=scheduler,
        scheduler_fell_back=scheduler_fell_back,
    )


def _find_sampler_and_suffix(name: str) -> tuple[Sampler | None, Scheduler | None]:
    """The sampler a name means, and the scheduler its suffix names (if any).

    The suffix is stripped first, as A1111 does (no sampler name ends in a scheduler's name, so the
    order never changes an answer). The sampler part is unknown -> (None, suffix scheduler).
    """
    base, suffix_scheduler = _strip_schedule_suffix(name)
    sampler = find_sampler(base)
    if sampler is None and suffix_scheduler is None:
        sampler, suffix_scheduler = _legacy_alias(base)
    return sampler, suffix_scheduler


def _strip_schedule_suffix(name: str) -> tuple[str, Scheduler | None]:
    """Strip one " <label|name|alias>" suffix, the longest that matches, ignoring case.

    A1111 loops over the schedulers in table order and may strip several suffixes, so "Euler SGM
    Uniform" loses " Uniform" and falls back to DPM++ 2M; the longest match keeps it Euler with
    SGM Uniform. Every name A1111 resolves to a known sampler resolves the same here.
    """
    for suffix, scheduler in _SUFFIXES:
        if len(name) > len(suffix) and name[-len(suffix) :].casefold() == suffix:
            return name[: -len(suffix)], scheduler
    return name, None


def _legacy_alias(name: str) -> tuple[Sampler | None, Scheduler | None]:
    folded = name.strip().casefold()
    for suffix, scheduler_name in _LEGACY_ALIAS_SUFFIXES:
        if folded.endswith(suffix):
            sampler = _SAMPLERS_FOLDED.get(folded[: -len(suffix)])
            if sampler is not None:
                return sampler, _SCHEDULERS_BY_NAME[scheduler_name]
    return None, None
