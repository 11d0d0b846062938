"""Variation seeds on the real pipeline: strength 0 is the seed, 1 is the subseed."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from sdgate.core.requests import HiresSettings
from sdgate.engine import hires
from sdgate.engine.diffusers_engine import DiffusersEngine
from sdgate.engine.sampling import slerp
from tests.engine.conftest import generate, pixels


def test_strength_zero_is_the_seed_and_one_is_the_subseed(engine: DiffusersEngine) -> None:
    seed, sub = pixels(generate(engine, seed=7))[0], pixels(generate(engine, seed=99))[0]
    zero = generate(engine, seed=7, subseed=99, subseed_strength=0.0)
    assert np.array_equal(pixels(zero)[0], seed)
    one = generate(engine, seed=7, subseed=99, subseed_strength=1.0)
    assert np.abs(pixels(one)[0].astype(int) - sub.astype(int)).max() <= 1
    half = pixels(generate(engine, seed=7, subseed=99, subseed_strength=0.5))[0]
    assert not np.array_equal(half, seed) and not np.array_equal(half, sub)
    assert [img.subseed for img in one.images] == [99]
    assert "Variation seed: 99, Variation seed strength: 1, " in one.images[0].infotext


HIRES = HiresSettings(scale=1.5, second_pass_steps=3, denoising_strength=0.9)  # noise matters at 0.9


def test_the_hires_pass_draws_variation_noise_too(engine: DiffusersEngine) -> None:
    plain = pixels(generate(engine, seed=7, hires=HIRES))[0]
    zero = pixels(generate(engine, seed=7, subseed=99, subseed_strength=0.0, hires=HIRES))[0]
    assert np.array_equal(plain, zero)  # no variation: exactly the pass as before
    other = pixels(generate(engine, seed=99, hires=HIRES))[0].astype(int)
    full = pixels(generate(engine, seed=7, subseed=99, subseed_strength=1.0, hires=HIRES))[0].astype(int)
    # Strength 1 is the subseed in both passes (a second pass on seed 7's noise would be far off).
    assert np.abs(full - other).max() <= 2
    assert np.abs(plain.astype(int) - other).mean() > 5  # (seed 7's second-pass noise: ~8 off)


def test_the_hires_pass_noise_follows_seed_resize_and_variation(
    engine: DiffusersEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    drawn: list[torch.Tensor | None] = []
    real = hires.pass_noise

    def spy(*args: Any, **kwargs: Any) -> Any:
        drawn.append(real(*args, **kwargs))
        return drawn[-1]

    monkeypatch.setattr(hires, "pass_noise", spy)
    out = generate(
        engine,
        seed=5,
        subseed=6,
        subseed_strength=0.3,
        seed_resize_from_w=32,
        seed_resize_from_h=32,
        hires=HIRES,
    )
    noise = drawn[-1]
    assert noise is not None and noise.shape == (1, 4, 12, 12)  # the 96x96 pass
    small = slerp(0.3, _randn(5, (4, 4, 4)), _randn(6, (4, 4, 4)))
    torch.testing.assert_close(noise[0, :, 4:8, 4:8], small)  # pasted into the middle of 12x12
    assert "Seed resize from: 32x32" in out.images[0].infotext
    generate(engine, seed=5, hires=HIRES)
    assert drawn[-1] is None  # neither: the pipeline's own per-seed draw, as before


def _randn(seed: int, shape: tuple[int, ...]) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))
