"""The sampler table: every A1111 sampler x schedule pair runs something, and says so when it differs."""

from __future__ import annotations

import inspect

import numpy as np
import pytest
import torch
from diffusers import EulerAncestralDiscreteScheduler

from sdgate.core.errors import InvalidRequest
from sdgate.core.samplers import SAMPLERS, SCHEDULERS
from sdgate.engine import schedulers as sch
from sdgate.engine.configs import shipped_configs
from sdgate.engine.diffusers_engine import DiffusersEngine
from tests.engine.conftest import generate

BASE = shipped_configs("sd1")["scheduler"]
SAMPLER_NAMES = [s.name for s in SAMPLERS]
SCHEDULE_NAMES = [s.name for s in SCHEDULERS]
STEPS = 8


def _sigmas(scheduler: object) -> np.ndarray:
    scheduler.set_timesteps(STEPS)  # type: ignore[attr-defined]
    return scheduler.sigmas.numpy()  # type: ignore[attr-defined]


def _denoise(scheduler: object, steps: int = STEPS) -> torch.Tensor:
    """A whole sampling loop with a toy noise predictor: every step of the scheduler runs."""
    scheduler.set_timesteps(steps)  # type: ignore[attr-defined]
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0)) * scheduler.init_noise_sigma  # type: ignore[attr-defined]
    gen = torch.Generator().manual_seed(1)
    for t in scheduler.timesteps:  # type: ignore[attr-defined]
        eps = 0.5 * torch.tanh(scheduler.scale_model_input(x, t))  # type: ignore[attr-defined]
        kwargs = {"generator": gen} if "generator" in inspect.signature(scheduler.step).parameters else {}  # type: ignore[attr-defined]
        x = scheduler.step(eps, t, x, **kwargs).prev_sample  # type: ignore[attr-defined]
    return x


def test_the_table_covers_every_a1111_sampler() -> None:
    assert set(sch.SAMPLERS) == set(SAMPLER_NAMES)


@pytest.mark.parametrize("schedule", SCHEDULE_NAMES)
@pytest.mark.parametrize("sampler", SAMPLER_NAMES)
def test_every_pair_builds_a_working_scheduler_or_says_why_not(sampler: str, schedule: str) -> None:
    plan = sch.build_scheduler(sampler, schedule, BASE, seeds=[1])
    assert torch.isfinite(_denoise(plan.scheduler)).all()
    assert len(plan.scheduler.timesteps) >= STEPS
    assert plan.sampler == sampler
    spec = sch.SAMPLERS[sampler]
    if spec.note:
        assert spec.note in plan.notes
    requested = sch.concrete_schedule(sampler, schedule)
    if plan.schedule != requested:  # a schedule that did not run must be explained
        assert any(requested.replace("_", " ") in n.lower() or "schedule" in n for n in plan.notes), (
            plan.notes
        )
    if not plan.notes:
        assert spec.note is None


def test_automatic_means_the_samplers_a1111_default() -> None:
    assert sch.build_scheduler("DPM++ 2M", "automatic", BASE).schedule == "karras"
    assert sch.build_scheduler("DPM++ 2M SDE", "automatic", BASE).schedule == "exponential"
    plan = sch.build_scheduler("Euler", "automatic", BASE)
    assert plan.schedule == "automatic" and plan.schedule_label == "Automatic"
    assert plan.scheduler.config.timestep_spacing == "linspace"  # k-diffusion's get_sigmas
    ddim = sch.build_scheduler("DDIM", "automatic", BASE).scheduler
    assert ddim.config.timestep_spacing == "leading" and ddim.config.steps_offset == 1


def test_schedules_reach_the_scheduler_config() -> None:
    cfg = sch.build_scheduler("DPM++ 2M", "karras", BASE).scheduler.config
    assert cfg.use_karras_sigmas and cfg.algorithm_type == "dpmsolver++" and cfg.solver_order == 2
    cfg = sch.build_scheduler("DPM++ 2M SDE Heun", "beta", BASE).scheduler.config
    assert cfg.use_beta_sigmas and not cfg.use_karras_sigmas and cfg.solver_type == "heun"
    assert sch.build_scheduler("Euler", "sgm_uniform", BASE).scheduler.config.timestep_spacing == "trailing"
    assert sch.build_scheduler("LMS", "polyexponential", BASE).scheduler.config.use_exponential_sigmas
    assert sch.build_scheduler("DPM++ 2M", "karras", BASE).schedule_label == "Karras"


def test_a_previous_jobs_options_never_leak_into_the_next() -> None:
    heun = sch.build_scheduler("DPM++ 2M SDE Heun", "karras", BASE).scheduler
    plain = sch.build_scheduler("DPM++ 2M", "exponential", dict(heun.config))
    assert (
        plain.scheduler.config.solver_type != "heun" or "solver_type" not in sch.SAMPLERS["DPM++ 2M"].options
    )
    assert plain.scheduler.config.algorithm_type == "dpmsolver++"
    assert not plain.scheduler.config.use_karras_sigmas


@pytest.mark.parametrize("sampler", ["Euler", "Euler a", "DPM++ 2M", "Heun", "LMS", "DPM2", "UniPC"])
def test_align_your_steps_sigmas_arrive(sampler: str) -> None:
    plan = sch.build_scheduler(sampler, "align_your_steps", BASE)
    sigmas = np.unique(_sigmas(plan.scheduler).round(4))[::-1]
    expected = sch.loglinear_sigmas(sch.AYS_SD1, STEPS)
    lo, hi = sch._sigma_range(plan.scheduler)  # the model's own range bounds every schedule
    np.testing.assert_allclose(sigmas[: len(expected)], np.clip(expected, lo, hi), rtol=2e-3)
    xl = sch.build_scheduler(sampler, "align_your_steps", BASE, family="sdxl")
    assert not np.allclose(_sigmas(xl.scheduler)[1], _sigmas(plan.scheduler)[1])


def test_kl_optimal_sigmas_arrive() -> None:
    sigmas = _sigmas(sch.build_scheduler("Euler", "kl_optimal", BASE).scheduler)
    lo, hi = sch._sigma_range(sch.build_scheduler("Euler", "karras", BASE).scheduler)
    np.testing.assert_allclose(sigmas[:-1], sch.kl_optimal_sigmas(STEPS, lo, hi), rtol=1e-4)
    assert sigmas[-1] == 0


def test_loglinear_interpolation_keeps_the_table_at_its_own_length() -> None:
    np.testing.assert_allclose(sch.loglinear_sigmas(sch.AYS_SD1, len(sch.AYS_SD1)), sch.AYS_SD1)
    five = sch.loglinear_sigmas(sch.AYS_SD1, 5)
    assert len(five) == 5 and five[0] == pytest.approx(14.615) and five[-1] == pytest.approx(0.029)
    assert all(np.diff(five) < 0)


def test_timestep_samplers_ignore_a_schedule_they_cannot_run_and_say_so() -> None:
    plan = sch.build_scheduler("DDIM", "karras", BASE)
    assert plan.schedule == "automatic" and any("ignored" in n for n in plan.notes)
    assert sch.build_scheduler("UniPC", "karras", BASE).scheduler.config.use_karras_sigmas  # it can


def test_missing_torchsde_is_a_note_not_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sch, "HAS_TORCHSDE", False)
    plan = sch.build_scheduler("DPM++ SDE", "karras", BASE)
    assert type(plan.scheduler).__name__ == "DPMSolverSinglestepScheduler"
    assert any("torchsde" in n for n in plan.notes)


def test_dpm_sde_gets_one_brownian_tree_per_image() -> None:
    pytest.importorskip("torchsde")
    plan = sch.build_scheduler("DPM++ SDE", "karras", BASE, seeds=[5, 6, 2**64 - 1])
    assert plan.scheduler.noise_sampler_seed == [5, 6, 2**64 - 1]


def test_unknown_names_are_client_errors() -> None:
    with pytest.raises(InvalidRequest) as err:
        sch.build_scheduler("Euler Karras", "karras", BASE)
    assert err.value.field == "sampler"
    with pytest.raises(InvalidRequest) as err:
        sch.build_scheduler("Euler", "Karras", BASE)
    assert err.value.field == "scheduler"


def test_our_euler_a_is_diffusers_euler_a_on_the_same_schedule() -> None:
    ours = sch.build_scheduler("Euler a", "automatic", BASE).scheduler
    theirs = EulerAncestralDiscreteScheduler.from_config(BASE, timestep_spacing="linspace")
    sample = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    results = []
    for scheduler in (ours, theirs):
        scheduler.set_timesteps(STEPS)
        x = sample * scheduler.init_noise_sigma
        gen = torch.Generator().manual_seed(1)
        for t in scheduler.timesteps:
            eps = torch.tanh(scheduler.scale_model_input(x, t))  # any deterministic "model"
            x = scheduler.step(eps, t, x, generator=gen).prev_sample
        results.append(x)
    torch.testing.assert_close(results[0], results[1], rtol=1e-4, atol=1e-4)


def test_euler_a_eta_zero_is_deterministic_euler() -> None:
    plan = sch.build_scheduler("Euler a", "karras", BASE, eta=0.0)
    euler = sch.build_scheduler("Euler", "karras", BASE).scheduler
    sample = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    outs = []
    for scheduler in (plan.scheduler, euler):
        scheduler.set_timesteps(STEPS)
        x = sample.clone()
        for t in scheduler.timesteps:
            x = scheduler.step(torch.tanh(x), t, x).prev_sample
        outs.append(x)
    torch.testing.assert_close(outs[0], outs[1])


@pytest.mark.parametrize("sampler", SAMPLER_NAMES)
def test_every_sampler_draws_through_the_pipeline(engine: DiffusersEngine, sampler: str) -> None:
    out = generate(engine, sampler=sampler, steps=4, width=32, height=32)
    image = np.asarray(out.images[0].image)
    assert image.shape == (32, 32, 3)
    assert f"Sampler: {sampler}," in out.images[0].infotext
    note = sch.SAMPLERS[sampler].note
    assert (note is not None) == ("Sampler note" in out.images[0].infotext)
    assert out.notes == ([note] if note else [])


def test_options_a1111_would_use_and_we_cannot_are_noted() -> None:
    fast = sch.build_scheduler("DPM fast", "automatic", BASE, eta=0.5, s_noise=0.9)
    assert any("eta 0.5 is not supported for DPM fast" in n for n in fast.notes)
    assert any("s_noise 0.9" in n for n in fast.notes) and fast.params == {}
    two_s = sch.build_scheduler("DPM++ 2S a", "karras", BASE, eta=0.5)
    assert any("eta 0.5 is not supported for DPM++ 2S a" in n for n in two_s.notes)
    sde = sch.build_scheduler("DPM++ 2M SDE", "karras", BASE, eta=0.5, s_noise=0.9)
    assert any("eta 0.5" in n for n in sde.notes) and sde.params == {"Sigma noise": 0.9}
    assert sde.scheduler.s_noise == 0.9
    # Options the sampler does not take in A1111 either: neither a note nor an infotext entry.
    for sampler in ("LMS", "PLMS", "UniPC", "DPM++ 2M"):
        plan = sch.build_scheduler(sampler, "automatic", BASE, eta=0.3, s_noise=0.5, s_churn=1.0)
        assert plan.notes == [] and plan.params == {}, sampler
    euler_a = sch.build_scheduler("Euler a", "karras", BASE, eta=0.5, s_noise=0.9)
    assert euler_a.notes == [] and (euler_a.scheduler.eta, euler_a.scheduler.s_noise) == (0.5, 1.0)
    assert euler_a.params == {"Eta": 0.5}  # A1111 passes no s_noise to Euler a


@pytest.mark.parametrize(
    ("sampler", "options", "params"),
    [
        ("Euler a", {"eta": 1.0}, {}),
        ("Euler a", {"eta": 0.0}, {"Eta": 0.0}),
        ("DDIM", {"eta": 0.0}, {}),
        ("DDIM", {"eta": 0.4}, {"Eta DDIM": 0.4}),
        ("DDIM CFG++", {"eta": 1.0}, {"Eta DDIM": 1.0}),
        ("Euler", {"eta": 0.5, "s_tmax": 0.0, "s_noise": 1.0}, {}),
        (
            "Euler",
            {"s_churn": 0.5, "s_tmin": 0.1, "s_tmax": 10.0, "s_noise": 0.9},
            {"Sigma churn": 0.5, "Sigma tmin": 0.1, "Sigma tmax": 10.0, "Sigma noise": 0.9},
        ),
        ("DPM2 a", {"eta": 0.5, "s_noise": 0.8}, {"Eta": 0.5, "Sigma noise": 0.8}),
        ("DPM++ SDE", {"eta": 1.0, "s_noise": 0.8}, {"Sigma noise": 0.8}),
        ("DPM++ 3M SDE", {"s_noise": 0.8}, {"Sigma noise": 0.8}),
    ],
)
def test_infotext_entries_follow_a1111(sampler: str, options: dict, params: dict) -> None:
    plan = sch.build_scheduler(sampler, "automatic", BASE, **options)
    assert plan.params == params and plan.notes == (
        sch.SAMPLERS[sampler].note and [sch.SAMPLERS[sampler].note] or []
    )


def _loop(scheduler: object, seed: int = 1, steps: int = STEPS) -> torch.Tensor:
    """``_denoise`` with the step noise's generator chosen by the caller."""
    scheduler.set_timesteps(steps)  # type: ignore[attr-defined]
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0)) * scheduler.init_noise_sigma  # type: ignore[attr-defined]
    gen = torch.Generator().manual_seed(seed)
    for t in scheduler.timesteps:  # type: ignore[attr-defined]
        eps = 0.5 * torch.tanh(scheduler.scale_model_input(x, t))  # type: ignore[attr-defined]
        kwargs = {"generator": gen} if "generator" in inspect.signature(scheduler.step).parameters else {}  # type: ignore[attr-defined]
        x = scheduler.step(eps, t, x, **kwargs).prev_sample  # type: ignore[attr-defined]
    return x


def test_euler_churn_is_diffusers_euler_with_the_jobs_values() -> None:
    from diffusers import EulerDiscreteScheduler

    plain = sch.build_scheduler("Euler", "karras", BASE).scheduler
    stock = EulerDiscreteScheduler.from_config(BASE, timestep_spacing="linspace", use_karras_sigmas=True)
    assert torch.equal(_loop(plain), _loop(stock))  # no churn: bit-identical to before
    churned = sch.build_scheduler("Euler", "karras", BASE, s_churn=2.0, s_noise=0.9, s_tmin=0.5, s_tmax=8.0)
    x = _loop(churned.scheduler)
    assert not torch.allclose(x, _loop(plain), atol=1e-3)
    assert not torch.equal(x, _loop(churned.scheduler, seed=2))  # the churn noise is the generator's
    # The same values handed to diffusers' own step give the same loop.
    stock.set_timesteps(STEPS)
    y = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0)) * stock.init_noise_sigma
    gen = torch.Generator().manual_seed(1)
    for t in stock.timesteps:
        eps = 0.5 * torch.tanh(stock.scale_model_input(y, t))
        y = stock.step(eps, t, y, s_churn=2.0, s_tmin=0.5, s_tmax=8.0, s_noise=0.9, generator=gen).prev_sample
    assert torch.equal(x, y)
    # A window that holds no sigma churns nothing.
    outside = sch.build_scheduler("Euler", "karras", BASE, s_churn=2.0, s_tmin=100.0, s_tmax=200.0)
    assert torch.equal(_loop(outside.scheduler), _loop(plain))


@pytest.mark.parametrize("sampler", ["Heun", "DPM2"])
def test_heun_and_dpm2_churn(sampler: str) -> None:
    from diffusers import HeunDiscreteScheduler, KDPM2DiscreteScheduler

    stock_class = {"Heun": HeunDiscreteScheduler, "DPM2": KDPM2DiscreteScheduler}[sampler]
    stock = stock_class.from_config(BASE, timestep_spacing="linspace", use_karras_sigmas=True)
    plain = sch.build_scheduler(sampler, "karras", BASE).scheduler
    assert torch.equal(_loop(plain), _loop(stock))  # no churn: bit-identical to before
    churned = sch.build_scheduler(sampler, "karras", BASE, s_churn=2.0, s_noise=0.9)
    assert churned.notes == [] and churned.params == {"Sigma churn": 2.0, "Sigma noise": 0.9}
    x = _loop(churned.scheduler)
    assert torch.isfinite(x).all() and not torch.allclose(x, _loop(plain), atol=1e-3)
    assert not torch.equal(x, _loop(churned.scheduler, seed=2))  # the churn noise is the generator's
    outside = sch.build_scheduler(sampler, "karras", BASE, s_churn=2.0, s_tmin=100.0, s_tmax=200.0)
    assert torch.equal(_loop(outside.scheduler), _loop(plain))


@pytest.mark.parametrize("sampler", ["Heun", "DPM2"])
def test_churned_steps_follow_k_diffusion(sampler: str) -> None:
    """With a constant noise prediction (where the evaluation points cannot matter), the loop is
    k-diffusion's: each step adds ``s_noise * sqrt(sigma_hat^2 - sigma^2)`` of noise, then moves
    by the prediction from sigma_hat to the next sigma."""
    steps, churn, s_noise, tmax = 5, 2.0, 0.9, 3.0
    scheduler = sch.build_scheduler(sampler, "karras", BASE, s_churn=churn, s_noise=s_noise, s_tmax=tmax)
    ours = scheduler.scheduler
    ours.set_timesteps(steps)
    x0 = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0)) * ours.init_noise_sigma
    eps = torch.full_like(x0, 0.3)
    gen, x = torch.Generator().manual_seed(1), x0
    for t in ours.timesteps:
        x = ours.step(eps, t, x, generator=gen).prev_sample
    sigmas = torch.unique_consecutive(ours.sigmas).double().tolist()
    assert len(sigmas) == steps + 1
    gen, y = torch.Generator().manual_seed(1), x0.double()
    for sigma, sigma_next in zip(sigmas, sigmas[1:], strict=False):
        gamma = min(churn / steps, 2**0.5 - 1) if sigma <= tmax else 0.0
        sigma_hat = sigma * (gamma + 1)
        if gamma > 0:
            y = y + torch.randn(x0.shape, generator=gen).double() * s_noise * (sigma_hat**2 - sigma**2) ** 0.5
        y = y + eps.double() * (sigma_next - sigma_hat)
    torch.testing.assert_close(x.double(), y, rtol=1e-4, atol=1e-4)


def test_dpm2_ancestral_eta_and_s_noise() -> None:
    from diffusers import KDPM2AncestralDiscreteScheduler

    stock = KDPM2AncestralDiscreteScheduler.from_config(
        BASE, timestep_spacing="linspace", use_karras_sigmas=True
    )
    ours = sch.build_scheduler("DPM2 a", "karras", BASE).scheduler
    assert torch.equal(_loop(ours), _loop(stock))
    # The recomputation reproduces diffusers' tables at eta 1, s_noise 1.
    ours.set_timesteps(STEPS)
    tables = (ours.sigmas_up.clone(), ours.sigmas_down.clone(), ours.sigmas_interpol.clone())
    ours.ancestral_sigmas()
    for before, after in zip(tables, (ours.sigmas_up, ours.sigmas_down, ours.sigmas_interpol), strict=True):
        torch.testing.assert_close(before, after, equal_nan=True)  # NaN past the last sigma, as diffusers
    quiet = sch.build_scheduler("DPM2 a", "karras", BASE, s_noise=0.5).scheduler
    quiet.set_timesteps(STEPS)
    torch.testing.assert_close(quiet.sigmas_up, tables[0] * 0.5, equal_nan=True)
    torch.testing.assert_close(quiet.sigmas_down, tables[1], equal_nan=True)
    eta0 = sch.build_scheduler("DPM2 a", "karras", BASE, eta=0.0).scheduler
    assert torch.equal(_loop(eta0, seed=1), _loop(eta0, seed=2))  # no ancestral noise at eta 0
    assert not torch.equal(_loop(ours, seed=1), _loop(ours, seed=2))
    eta0.set_timesteps(STEPS)
    assert float(eta0.sigmas_up[:-3].abs().max()) == 0.0


def test_sde_samplers_scale_their_noise_by_s_noise() -> None:
    for sampler in ("DPM++ 2M SDE", "DPM++ 3M SDE", "DPM++ SDE"):
        plain = sch.build_scheduler(sampler, "karras", BASE, seeds=[5]).scheduler
        same = sch.build_scheduler(sampler, "karras", BASE, seeds=[5], s_noise=1.0).scheduler
        assert torch.equal(_loop(plain), _loop(same)), sampler
        silent = sch.build_scheduler(sampler, "karras", BASE, seeds=[5], s_noise=0.0).scheduler
        assert not torch.allclose(_loop(silent), _loop(plain), atol=1e-3), sampler
        if sampler != "DPM++ SDE":  # Brownian noise comes from the seeds, not the generator
            assert torch.equal(_loop(silent, seed=1), _loop(silent, seed=2)), sampler


def test_stock_multistep_sde_is_unchanged_at_s_noise_1() -> None:
    from diffusers import DPMSolverMultistepScheduler

    stock = DPMSolverMultistepScheduler.from_config(
        BASE,
        algorithm_type="sde-dpmsolver++",
        solver_order=2,
        timestep_spacing="linspace",
        use_karras_sigmas=True,
    )
    ours = sch.build_scheduler("DPM++ 2M SDE", "karras", BASE).scheduler
    assert torch.equal(_loop(ours), _loop(stock))


def test_sampler_options_reach_the_pipeline(engine: DiffusersEngine) -> None:
    plain = generate(engine, sampler="Euler", seed=3)
    churned = generate(engine, sampler="Euler", seed=3, s_churn=3.0, s_tmax=0.0, s_noise=0.95)
    assert not np.array_equal(np.asarray(plain.images[0].image), np.asarray(churned.images[0].image))
    assert "Sigma churn: 3, Sigma noise: 0.95, Version" in churned.images[0].infotext
    ddim = generate(engine, sampler="DDIM", seed=3, eta=0.7)
    assert "Eta DDIM: 0.7" in ddim.images[0].infotext
    assert not np.array_equal(
        np.asarray(ddim.images[0].image), np.asarray(generate(engine, sampler="DDIM", seed=3).images[0].image)
    )
    dpm2a = generate(engine, sampler="DPM2 a", seed=3, eta=0.5)
    assert "Eta: 0.5" in dpm2a.images[0].infotext and "Sampler note" not in dpm2a.images[0].infotext
    heun = generate(engine, sampler="Heun", seed=3, s_churn=1.0)
    assert "Sigma churn: 1, Version" in heun.images[0].infotext and not heun.notes
    plain_heun = generate(engine, sampler="Heun", seed=3)
    assert not np.array_equal(np.asarray(heun.images[0].image), np.asarray(plain_heun.images[0].image))
