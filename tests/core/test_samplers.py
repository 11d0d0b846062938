from __future__ import annotations

import dataclasses

import pytest

from sdgate.core.samplers import (
    FALLBACK_SAMPLER,
    SAMPLERS,
    SCHEDULERS,
    SamplerChoice,
    SchedulerItem,
    find_sampler,
    find_scheduler,
    get_sampler,
    is_known_sampler,
    resolve_sampler,
    samplers_listing,
    schedulers_listing,
)

SAMPLER_ORDER = [
    "DPM++ 2M", "DPM++ SDE", "DPM++ 2M SDE", "DPM++ 2M SDE Heun", "DPM++ 2S a", "DPM++ 3M SDE",
    "Euler a", "Euler", "LMS", "Heun", "DPM2", "DPM2 a", "DPM fast", "DPM adaptive", "Restart",
    "DDIM", "DDIM CFG++", "PLMS", "UniPC", "LCM",
]  # fmt: skip

# v1.8.0's list (§2.2): every one must still resolve to a real sampler, never the fallback.
PRE_19_NAMES = [
    "DPM++ 2M Karras", "DPM++ SDE Karras", "DPM++ 2M SDE Exponential", "DPM++ 2M SDE Karras",
    "Euler a", "Euler", "LMS", "Heun", "DPM2", "DPM2 a", "DPM++ 2S a", "DPM++ 2M", "DPM++ SDE",
    "DPM++ 2M SDE", "DPM++ 2M SDE Heun", "DPM++ 2M SDE Heun Karras", "DPM++ 2M SDE Heun Exponential",
    "DPM++ 3M SDE", "DPM++ 3M SDE Karras", "DPM++ 3M SDE Exponential", "DPM fast", "DPM adaptive",
    "LMS Karras", "DPM2 Karras", "DPM2 a Karras", "DPM++ 2S a Karras", "Restart", "DDIM", "PLMS",
    "UniPC", "LCM",
]  # fmt: skip


def test_samplers_listing_is_a1111_order_and_shape() -> None:
    listing = samplers_listing()
    assert [item["name"] for item in listing] == SAMPLER_ORDER
    assert listing[0] == {"name": "DPM++ 2M", "aliases": ["k_dpmpp_2m"], "options": {"scheduler": "karras"}}
    assert listing[1] == {
        "name": "DPM++ SDE",
        "aliases": ["k_dpmpp_sde"],
        "options": {"scheduler": "karras", "second_order": "True", "brownian_noise": "True"},
    }
    assert listing[6] == {
        "name": "Euler a",
        "aliases": ["k_euler_a", "k_euler_ancestral"],
        "options": {"uses_ensd": "True"},
    }
    assert listing[7] == {"name": "Euler", "aliases": ["k_euler"], "options": {}}
    for item in listing:  # A1111's options are Dict[str, str]
        assert all(isinstance(v, str) for v in item["options"].values())


@pytest.mark.parametrize(
    ("name", "default_scheduler"),
    [
        ("DPM++ 2M", "karras"), ("DPM++ SDE", "karras"), ("DPM++ 2S a", "karras"), ("DPM2", "karras"),
        ("DPM2 a", "karras"), ("Restart", "karras"), ("DPM++ 2M SDE", "exponential"),
        ("DPM++ 2M SDE Heun", "exponential"), ("DPM++ 3M SDE", "exponential"), ("Euler a", None),
        ("Euler", None), ("LMS", None), ("Heun", None), ("DPM fast", None), ("DPM adaptive", None),
        ("DDIM", None), ("DDIM CFG++", None), ("PLMS", None), ("UniPC", None), ("LCM", None),
    ],
)  # fmt: skip
def test_default_schedulers(name: str, default_scheduler: str | None) -> None:
    assert get_sampler(name).default_scheduler == default_scheduler


def test_sampler_flags() -> None:
    assert get_sampler("Euler a").uses_ensd and not get_sampler("Euler").uses_ensd
    assert get_sampler("Heun").second_order and not get_sampler("DPM++ 2M").second_order


def test_schedulers_listing_matches_a1111_exactly() -> None:
    def row(
        name: str, label: str, aliases: list[str] | None = None, rho: float = -1.0, inner: bool = False
    ) -> SchedulerItem:
        return {
            "name": name,
            "label": label,
            "aliases": aliases,
            "default_rho": rho,
            "need_inner_model": inner,
        }

    assert schedulers_listing() == [
        row("automatic", "Automatic"),
        row("uniform", "Uniform", inner=True),
        row("karras", "Karras", rho=7.0),
        row("exponential", "Exponential"),
        row("polyexponential", "Polyexponential", rho=1.0),
        row("sgm_uniform", "SGM Uniform", aliases=["SGMUniform"], inner=True),
        row("kl_optimal", "KL Optimal"),
        row("align_your_steps", "Align Your Steps"),
        row("simple", "Simple", inner=True),
        row("normal", "Normal", inner=True),
        row("ddim", "DDIM", inner=True),
        row("beta", "Beta", inner=True),
    ]


# (sampler_name, scheduler) -> (sampler, scheduler, label, fell_back)
RESOLUTION = [
    # §2.1 examples
    ("DPM++ 2M Karras", None, "DPM++ 2M", "karras", "Karras", False),
    ("DPM++ 2M SDE Karras", None, "DPM++ 2M SDE", "karras", "Karras", False),
    ("DPM++ 2M", None, "DPM++ 2M", "karras", "Karras", False),
    ("DPM++ 2M", "Automatic", "DPM++ 2M", "karras", "Karras", False),
    ("DPM++ 2M", "automatic", "DPM++ 2M", "karras", "Karras", False),
    ("DPM++ 2M", "Uniform", "DPM++ 2M", "uniform", "Uniform", False),  # how 1.10 gets the old default
    ("Euler", None, "Euler", "automatic", "Automatic", False),
    ("Euler a", "", "Euler a", "automatic", "Automatic", False),
    ("foo", None, "DPM++ 2M", "karras", "Karras", True),
    ("foo", "Euler", "DPM++ 2M", "karras", "Karras", True),
    ("Euler", "Karras", "Euler", "karras", "Karras", False),  # label
    ("Euler", "karras", "Euler", "karras", "Karras", False),  # name
    ("Euler", "normal", "Euler", "normal", "Normal", False),  # Open WebUI's default
    ("Euler", "Normal", "Euler", "normal", "Normal", False),
    ("Euler", "NORMAL", "Euler", "normal", "Normal", False),  # lenient
    ("Euler", "sgm_uniform", "Euler", "sgm_uniform", "SGM Uniform", False),
    ("Euler", "SGM Uniform", "Euler", "sgm_uniform", "SGM Uniform", False),
    ("Euler", "SGMUniform", "Euler", "sgm_uniform", "SGM Uniform", False),  # alias, lenient
    ("Euler", "Align Your Steps", "Euler", "align_your_steps", "Align Your Steps", False),
    ("Euler", "no such schedule", "Euler", "automatic", "Automatic", False),
    ("DPM++ SDE", "nonsense", "DPM++ SDE", "karras", "Karras", False),
    # empty sampler: the API default, Euler
    (None, None, "Euler", "automatic", "Automatic", False),
    ("", "Karras", "Euler", "karras", "Karras", False),
    ("  ", None, "Euler", "automatic", "Automatic", False),
    # suffix rule, and it beats the scheduler field
    ("DPM++ 2M SDE Heun Exponential", None, "DPM++ 2M SDE Heun", "exponential", "Exponential", False),
    ("DPM++ 2M SDE Heun Karras", None, "DPM++ 2M SDE Heun", "karras", "Karras", False),
    ("DPM++ 3M SDE Exponential", None, "DPM++ 3M SDE", "exponential", "Exponential", False),
    ("LMS Karras", None, "LMS", "karras", "Karras", False),
    ("DPM2 a Karras", None, "DPM2 a", "karras", "Karras", False),
    ("DPM++ 2M Karras", "Exponential", "DPM++ 2M", "karras", "Karras", False),
    ("Euler sgm_uniform", None, "Euler", "sgm_uniform", "SGM Uniform", False),
    ("Euler SGMUniform", None, "Euler", "sgm_uniform", "SGM Uniform", False),
    ("Euler Align Your Steps", None, "Euler", "align_your_steps", "Align Your Steps", False),
    ("foo Karras", None, "DPM++ 2M", "karras", "Karras", True),
    # exact names that look like suffixes are not split
    ("DDIM", None, "DDIM", "automatic", "Automatic", False),
    ("DDIM CFG++", None, "DDIM CFG++", "automatic", "Automatic", False),
    ("DDIM", "DDIM", "DDIM", "ddim", "DDIM", False),
    # lenient: aliases, any case, pre-1.9 aliases (A1111 1.10 would fall back for these)
    ("k_euler_a", None, "Euler a", "automatic", "Automatic", False),
    ("k_euler_ancestral", None, "Euler a", "automatic", "Automatic", False),
    ("k_dpmpp_2m", None, "DPM++ 2M", "karras", "Karras", False),
    ("k_dpmpp_2m_ka", None, "DPM++ 2M", "karras", "Karras", False),
    ("k_dpmpp_2m_sde_exp", None, "DPM++ 2M SDE", "exponential", "Exponential", False),
    ("K_LMS_KA", None, "LMS", "karras", "Karras", False),
    ("euler a", None, "Euler a", "automatic", "Automatic", False),
    ("dpm++ 2m karras", None, "DPM++ 2M", "karras", "Karras", False),
    ("DPM++ 2M karras", None, "DPM++ 2M", "karras", "Karras", False),
]


@pytest.mark.parametrize(("name", "scheduler", "sampler", "sched", "label", "fell_back"), RESOLUTION)
def test_resolve_sampler(
    name: str | None, scheduler: str | None, sampler: str, sched: str, label: str, fell_back: bool
) -> None:
    choice = resolve_sampler(name, scheduler)
    assert (choice.sampler, choice.scheduler, choice.scheduler_label, choice.fell_back) == (
        sampler,
        sched,
        label,
        fell_back,
    )
    assert choice.requested == (name or "")
    assert choice.requested_scheduler == scheduler


def test_fallback_keeps_what_was_asked() -> None:
    choice = resolve_sampler("Turbo Sampler 9000", "Karras")
    assert choice == SamplerChoice(
        sampler=FALLBACK_SAMPLER,
        scheduler="karras",
        scheduler_label="Karras",
        requested="Turbo Sampler 9000",
        fell_back=True,
        requested_scheduler="Karras",
        scheduler_fell_back=False,
    )
    with pytest.raises(dataclasses.FrozenInstanceError):
        choice.sampler = "Euler"  # type: ignore[misc]


def test_unknown_scheduler_is_visible() -> None:
    assert resolve_sampler("Euler", "bogus").scheduler_fell_back
    assert not resolve_sampler("Euler", None).scheduler_fell_back
    assert not resolve_sampler("Euler", "").scheduler_fell_back
    assert not resolve_sampler("Euler Karras", "bogus").scheduler_fell_back  # the suffix decided


def test_default_sampler_can_be_changed() -> None:
    assert resolve_sampler(None, None, default_sampler="Euler a").sampler == "Euler a"
    assert resolve_sampler("", None, default_sampler="DPM++ 2M").scheduler == "karras"


@pytest.mark.parametrize("name", PRE_19_NAMES)
def test_pre_19_names_resolve(name: str) -> None:
    choice = resolve_sampler(name, None)
    assert not choice.fell_back
    assert name.startswith(choice.sampler)
    if name.endswith((" Karras", " Exponential")):
        assert choice.scheduler_label == name.rsplit(" ", 1)[1]


@pytest.mark.parametrize("sampler", [s.name for s in SAMPLERS])
@pytest.mark.parametrize("scheduler", SCHEDULERS, ids=lambda s: s.name)
def test_every_pair_round_trips(sampler: str, scheduler) -> None:  # type: ignore[no-untyped-def]
    for sent in (scheduler.name, scheduler.label):
        choice = resolve_sampler(sampler, sent)
        assert choice.sampler == sampler and not choice.fell_back
        expected = scheduler.name
        if expected == "automatic":
            expected = get_sampler(sampler).default_scheduler or "automatic"
        assert choice.scheduler == expected
        # and as a pre-1.9 combined name
        assert resolve_sampler(f"{sampler} {scheduler.label}", None).scheduler == expected


@pytest.mark.parametrize(
    ("name", "known"),
    [
        ("Euler", True), ("DPM++ 2M Karras", True), ("k_euler_a", True), ("k_dpmpp_2m_ka", True),
        ("euler a", True), ("foo", False), ("", False), ("Karras", False), ("foo Karras", False),
        ("k_nothing_ka", False),
    ],
)  # fmt: skip
def test_is_known_sampler(name: str, known: bool) -> None:
    assert is_known_sampler(name) is known


def test_find_helpers() -> None:
    assert find_sampler("DPM++ 2M") is SAMPLERS[0]
    assert find_sampler("nope") is None
    assert find_scheduler("Karras") is find_scheduler("karras") is SCHEDULERS[2]
    assert find_scheduler("nope") is None
