"""Variation seeds on the real pipeline: strength 0 is the seed, 1 is the subseed."""

from __future__ import annotations

import numpy as np

from sdgate.engine.diffusers_engine import DiffusersEngine
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
