"""NGMS (``s_min_uncond``): the hooks' arithmetic, the sigma they test, and every engine path."""

from __future__ import annotations

import functools
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch
from diffusers import UNet2DConditionModel
from PIL import Image

from sdgate.core.engine import EngineInputs, EngineOutput, NoControl
from sdgate.core.infotext import parse_infotext
from sdgate.core.requests import GenerationRequest, HiresSettings, Mode
from sdgate.engine import ngms
from sdgate.engine.composable import Part, composed
from sdgate.engine.diffusers_engine import DiffusersEngine
from sdgate.engine.prompts import encode_weighted
from sdgate.engine.schedulers import build_scheduler
from tests import tinymodels as tm
from tests.engine.conftest import generate, pixels

ALL = 1000.0  # above every sigma of an SD schedule: every odd call skips


@pytest.fixture(scope="module")
def pipe() -> Any:
    return tm.tiny_sd(0)


@pytest.fixture
def unet_batches(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The batch size of every UNet evaluation that really runs (after the hooks' cut)."""
    sizes: list[int] = []
    forward = UNet2DConditionModel.forward

    @functools.wraps(forward)  # AND's hook binds the arguments by forward's signature
    def counting(self: Any, sample: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        sizes.append(int(sample.shape[0]))
        return forward(self, sample, *args, **kwargs)

    monkeypatch.setattr(UNet2DConditionModel, "forward", counting)
    return sizes


def _unet(pipe: Any, x: torch.Tensor, cond: torch.Tensor, t: float = 500) -> torch.Tensor:
    return pipe.unet(x, torch.tensor(t), encoder_hidden_states=cond, return_dict=False)[0]


def _conds(pipe: Any) -> Iterator[torch.Tensor]:
    return (encode_weighted(pipe, t, None) for t in ("", "a red circle", "a blue square long text"))


# --- the hooks -----------------------------------------------------------------------------------


def test_odd_calls_below_the_sigma_run_the_cond_half_alone(pipe: Any, unet_batches: list[int]) -> None:
    torch.manual_seed(0)
    x = torch.randn(1, 4, 8, 8)
    u, c, _ = _conds(pipe)
    pipe.scheduler = build_scheduler("DDIM", "automatic", pipe.scheduler.config).scheduler
    with torch.no_grad():
        eu, ec = _unet(pipe, x, u), _unet(pipe, x, c)
        unet_batches.clear()
        with ngms.skipping_uncond(pipe, ALL, 1) as hooks:
            outs = [_unet(pipe, torch.cat([x, x]), torch.cat([u, c])) for _ in range(3)]
    assert unet_batches == [2, 1, 2]  # A1111 counts from 0 and skips the odd calls
    assert (hooks.calls, hooks.skipped) == (3, 1)
    assert torch.allclose(outs[0], torch.cat([eu, ec]), atol=1e-5)
    assert torch.equal(outs[1][:1], outs[1][1:])  # [cond, cond]: the pipeline's CFG gives cond
    assert torch.allclose(outs[1][1:], ec, atol=1e-5)
    assert not pipe.unet._forward_hooks and not pipe.unet._forward_pre_hooks


def test_nothing_is_skipped_above_the_sigma(pipe: Any, unet_batches: list[int]) -> None:
    x = torch.randn(2, 4, 8, 8)
    u, c, _ = _conds(pipe)
    sigma = ngms.sigma_at(pipe.scheduler.alphas_cumprod, 500)
    with torch.no_grad(), ngms.skipping_uncond(pipe, sigma * 0.99, 1) as hooks:
        for _ in range(2):
            _unet(pipe, x, torch.cat([u, c]), t=500)
    assert unet_batches == [2, 2] and hooks.skipped == 0


def test_with_and_the_first_part_stands_in_for_the_uncond(pipe: Any) -> None:
    """A1111's combine_denoised with the cond as uncond: c0 + sum w_i (c_i - c0)."""
    torch.manual_seed(1)
    x = torch.randn(1, 4, 8, 8)
    u, c0, c1 = _conds(pipe)
    parts = [Part(c0, None, 1.2), Part(c1, None, -0.5)]
    with torch.no_grad():
        e0, e1 = _unet(pipe, x, c0), _unet(pipe, x, c1)
        with composed(pipe.unet, 1, lambda: parts), ngms.skipping_uncond(pipe, ALL, 1):
            _unet(pipe, torch.cat([x, x]), torch.cat([u, c0]))  # call 0: guided as usual
            out = _unet(pipe, torch.cat([x, x]), torch.cat([u, c0]))
    assert torch.allclose(out[:1], e0, atol=1e-5)
    assert torch.allclose(out[1:], e0 - 0.5 * (e1 - e0), atol=1e-5)


@pytest.mark.parametrize("sampler", ["Euler", "Heun", "DPM2", "DPM++ 2M", "LMS"])
def test_the_sigma_is_the_schedulers_own(pipe: Any, sampler: str) -> None:
    """Where a scheduler keeps sigmas, the hook reads the one being evaluated; it agrees with the
    sigma of the timestep the UNet gets (the fallback DDIM and PLMS use)."""
    scheduler = build_scheduler(sampler, "automatic", pipe.scheduler.config).scheduler
    scheduler.set_timesteps(6)
    seen = []
    sample = torch.zeros(1, 4, 8, 8)
    for t in scheduler.timesteps:
        scheduler.scale_model_input(sample, t)
        seen.append((ngms.current_sigma(scheduler, t), ngms.sigma_at(scheduler.alphas_cumprod, float(t))))
        sample = scheduler.step(torch.zeros_like(sample), t, sample).prev_sample
    own, from_t = np.array(seen).T
    assert np.allclose(own, from_t, rtol=0.05)
    assert own[0] > 10 and (np.diff(own[::2]) < 0).all()


def test_sigma_at_is_the_models_discrete_sigma() -> None:
    alphas = torch.linspace(0.99, 0.01, 1000)
    assert ngms.sigma_at(alphas, 999) == pytest.approx(float(((1 - alphas[-1]) / alphas[-1]) ** 0.5))
    mid = ngms.sigma_at(alphas, 10.5)
    low, high = ngms.sigma_at(alphas, 10), ngms.sigma_at(alphas, 11)
    assert mid == pytest.approx((low * high) ** 0.5)  # log-linear, as k-diffusion


# --- the engine ----------------------------------------------------------------------------------


def test_zero_installs_nothing_and_changes_nothing(engine: DiffusersEngine, unet_batches: list[int]) -> None:
    plain = generate(engine, steps=4)
    plain_calls = list(unet_batches)
    unet_batches.clear()
    tiny = generate(engine, steps=4, s_min_uncond=1e-6)  # hooks on, below every sigma
    assert plain_calls == unet_batches == [2, 2, 2, 2]
    assert all(np.array_equal(a, b) for a, b in zip(pixels(plain), pixels(tiny), strict=True))
    assert "NGMS" not in parse_infotext(plain.images[0].infotext)


def test_a_large_value_skips_half_the_uncond_work(engine: DiffusersEngine, unet_batches: list[int]) -> None:
    plain = generate(engine, steps=4, batch_size=2)
    unet_batches.clear()
    fast = generate(engine, steps=4, batch_size=2, s_min_uncond=ALL)
    assert unet_batches == [4, 2, 4, 2]  # 25% fewer UNet evaluations
    again = generate(engine, steps=4, batch_size=2, s_min_uncond=ALL)
    assert all(np.array_equal(a, b) for a, b in zip(pixels(fast), pixels(again), strict=True))
    assert not np.array_equal(pixels(plain)[0], pixels(fast)[0])
    assert parse_infotext(fast.images[0].infotext)["NGMS"] == "1000"


def test_the_threshold_decides_which_steps_skip(engine: DiffusersEngine, unet_batches: list[int]) -> None:
    """Euler's 6 sigmas fall from ~14.6; a threshold of 2 only reaches the last calls."""
    generate(engine, steps=6, s_min_uncond=2.0)
    assert unet_batches[:3] == [2, 2, 2] and unet_batches[-1] == 1 and 1 in unet_batches


def test_second_order_samplers_count_model_calls(engine: DiffusersEngine, unet_batches: list[int]) -> None:
    generate(engine, steps=3, sampler="Heun", s_min_uncond=ALL)
    assert unet_batches == [2, 1, 2, 1, 2]  # Heun: 2 calls a step, the last step's one


def test_and_prompts_still_skip_and_stay_deterministic(
    engine: DiffusersEngine, unet_batches: list[int]
) -> None:
    prompt = "a red circle AND a blue square :0.7"
    plain = generate(engine, prompt=prompt, steps=4)
    unet_batches.clear()
    fast = generate(engine, prompt=prompt, steps=4, s_min_uncond=ALL)
    assert unet_batches == [2, 1, 1, 1] * 2  # each call: the guided batch (cut or not), then part 2
    again = generate(engine, prompt=prompt, steps=4, s_min_uncond=ALL)
    assert np.array_equal(pixels(fast)[0], pixels(again)[0])
    assert not np.array_equal(pixels(plain)[0], pixels(fast)[0])


def _img2img(engine: DiffusersEngine, mask: Image.Image | None = None, **fields: object) -> EngineOutput:
    rng = np.random.default_rng(0)
    init = Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8), "RGB")
    request = GenerationRequest(
        mode=Mode.INPAINT if mask is not None else Mode.IMG2IMG,
        prompt="a red circle",
        model="tiny-sd15",
        width=64,
        height=64,
        steps=4,
        seed=7,
        init_images=("x",),
        denoising_strength=1.0,
        **fields,  # type: ignore[arg-type]
    )
    return engine.generate(request, EngineInputs((init,), mask), NoControl())


@pytest.mark.parametrize("masked", [False, True])
def test_img2img_and_inpaint_skip_too(engine: DiffusersEngine, unet_batches: list[int], masked: bool) -> None:
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))
    plain = _img2img(engine, mask if masked else None)
    unet_batches.clear()
    fast = _img2img(engine, mask if masked else None, s_min_uncond=ALL)
    assert unet_batches == [2, 1, 2, 1]
    assert not np.array_equal(pixels(plain)[0], pixels(fast)[0])
    assert parse_infotext(fast.images[0].infotext)["NGMS"] == "1000"


def test_the_hires_pass_skips_too(engine: DiffusersEngine, unet_batches: list[int]) -> None:
    hires = HiresSettings(scale=1.5, second_pass_steps=4, denoising_strength=1.0)
    plain = generate(engine, steps=2, hires=hires)
    unet_batches.clear()
    fast = generate(engine, steps=2, hires=hires, s_min_uncond=ALL)
    assert unet_batches == [2, 1] + [2, 1, 2, 1]  # each pass counts from 0, as A1111's samplers
    assert not np.array_equal(pixels(plain)[0], pixels(fast)[0])


def test_the_refiner_counts_on_from_the_main_model(engine: DiffusersEngine, unet_batches: list[int]) -> None:
    out = generate(engine, steps=3, refiner="tiny-sd2-v", refiner_switch_at=0.3, s_min_uncond=ALL)
    assert "Refiner" in parse_infotext(out.images[0].infotext)
    assert unet_batches == [2, 1, 2]  # one main call (index 0), then the refiner's calls 1 and 2


def test_sdxl_cuts_its_added_conditioning_too(engine: DiffusersEngine, unet_batches: list[int]) -> None:
    plain = generate(engine, model="tiny-sdxl", steps=2)
    unet_batches.clear()
    fast = generate(engine, model="tiny-sdxl", steps=2, s_min_uncond=ALL)
    assert unet_batches == [2, 1]
    assert not np.array_equal(pixels(plain)[0], pixels(fast)[0])
