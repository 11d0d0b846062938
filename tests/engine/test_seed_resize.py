"""Seed resize (A1111's ``seed_resize_from_w/h``): noise drawn at the "from" size, pasted centred."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from sdgate.core.errors import InvalidRequest
from sdgate.core.requests import GenerationRequest
from sdgate.engine import diffusers_engine
from sdgate.engine.diffusers_engine import DiffusersEngine
from sdgate.engine.sampling import initial_noise, paste_centred, seed_resize_from, slerp
from tests.engine.conftest import generate, pixels


def randn(seed: int, shape: tuple[int, ...]) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def test_smaller_noise_is_pasted_in_the_centre_of_a_full_draw() -> None:
    noise, _ = initial_noise([5], [0], 0.0, (4, 8, 10), resize_from=(4, 6))
    small, full = randn(5, (4, 4, 6)), randn(5, (4, 8, 10))
    assert torch.equal(noise[0, :, 2:6, 2:8], small)
    outside = torch.ones(8, 10, dtype=torch.bool)
    outside[2:6, 2:8] = False
    assert torch.equal(noise[0][:, outside], full[:, outside])


def test_larger_noise_is_cropped_to_its_centre() -> None:
    noise, _ = initial_noise([5], [0], 0.0, (4, 4, 4), resize_from=(8, 6))
    assert torch.equal(noise[0], randn(5, (4, 8, 6))[:, 2:6, 1:5])


def test_the_same_size_is_the_plain_draw_and_the_generator_keeps_going() -> None:
    plain, gens = initial_noise([9, 10], [0, 0], 0.0, (4, 6, 6))
    same, same_gens = initial_noise([9, 10], [0, 0], 0.0, (4, 6, 6), resize_from=(6, 6))
    assert torch.equal(plain, same)
    resized, resized_gens = initial_noise([9], [0], 0.0, (4, 6, 6), resize_from=(4, 4))
    # A1111: the generator that drew the full-size background is the one the sampler continues.
    after = torch.Generator().manual_seed(9)
    torch.randn((4, 6, 6), generator=after)
    assert torch.equal(torch.randn(3, generator=resized_gens[0]), torch.randn(3, generator=after))


def test_variation_noise_is_mixed_at_the_from_size() -> None:
    noise, _ = initial_noise([5], [77], 0.4, (4, 8, 8), resize_from=(4, 4))
    mixed = slerp(0.4, randn(5, (4, 4, 4)), randn(77, (4, 4, 4)))
    assert torch.allclose(noise[0, :, 2:6, 2:6], mixed)
    assert torch.equal(noise[0, :, :2], randn(5, (4, 8, 8))[:, :2])  # the rest: the seed alone


def test_odd_margins_follow_a1111s_arithmetic() -> None:
    out = paste_centred(torch.ones(1, 9, 9), torch.zeros(1, 8, 8))
    # dx = (8 - 9) // 2 = -1, so A1111 pastes 9 - 2 = 7 columns and leaves the last one alone.
    assert out[0, :7, :7].eq(1).all() and out[0, 7].eq(0).all() and out[0, :, 7].eq(0).all()


@pytest.mark.parametrize(
    ("w", "h", "expected"), [(0, 0, None), (-1, 64, None), (64, 0, None), (32, 48, (6, 4)), (64, 64, (8, 8))]
)
def test_seed_resize_from_is_in_latent_pixels(w: int, h: int, expected: Any) -> None:
    request = GenerationRequest(seed_resize_from_w=w, seed_resize_from_h=h)
    assert seed_resize_from(request, 8) == expected


@pytest.mark.parametrize(
    ("w", "h", "field"), [(33, 64, "seed_resize_from_w"), (64, 20, "seed_resize_from_h")]
)
def test_sizes_off_the_vae_grid_are_rejected_naming_the_field(w: int, h: int, field: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        seed_resize_from(GenerationRequest(seed_resize_from_w=w, seed_resize_from_h=h), 8)
    assert info.value.field == field and field in str(info.value)
    assert seed_resize_from(GenerationRequest(seed_resize_from_w=36, seed_resize_from_h=20), 4) == (5, 9)


def test_the_engine_rejects_a_bad_size_as_a_client_error(engine: DiffusersEngine) -> None:
    with pytest.raises(InvalidRequest) as info:
        generate(engine, seed_resize_from_w=60, seed_resize_from_h=64)
    assert info.value.field == "seed_resize_from_w"


def test_the_engine_draws_resized_noise_and_writes_the_infotext(
    engine: DiffusersEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    drawn: list[torch.Tensor] = []
    real = diffusers_engine.initial_noise

    def spy(*args: Any, **kwargs: Any) -> Any:
        noise, gens = real(*args, **kwargs)
        drawn.append(noise)
        return noise, gens

    monkeypatch.setattr(diffusers_engine, "initial_noise", spy)
    out = generate(engine, seed=21, batch_size=2, seed_resize_from_w=32, seed_resize_from_h=32)
    assert drawn[0].shape == (2, 4, 8, 8)
    for i, seed in enumerate((21, 22)):
        assert torch.equal(drawn[0][i, :, 2:6, 2:6], randn(seed, (4, 4, 4)))
    assert "Seed resize from: 32x32, " in out.images[0].infotext
    assert out.images[0].infotext.index("Seed resize from") < out.images[0].infotext.index("Version")
    plain = generate(engine, seed=21, batch_size=2)
    assert "Seed resize" not in plain.images[0].infotext
    assert not np.array_equal(pixels(out)[0], pixels(plain)[0])
    same = generate(engine, seed=21, batch_size=2, seed_resize_from_w=64, seed_resize_from_h=64)
    assert np.array_equal(pixels(same)[1], pixels(plain)[1])  # the same size is no resize


def test_seed_resize_works_with_variation_seeds(engine: DiffusersEngine) -> None:
    fields: dict[str, Any] = {"seed": 4, "subseed": 8, "seed_resize_from_w": 32, "seed_resize_from_h": 32}
    half = pixels(generate(engine, subseed_strength=0.5, **fields))[0]
    zero = pixels(generate(engine, subseed_strength=0.0, **fields))[0]
    again = generate(engine, subseed_strength=0.5, **fields)
    assert np.array_equal(half, pixels(again)[0]) and not np.array_equal(half, zero)
    text = again.images[0].infotext
    assert "Variation seed: 8, Variation seed strength: 0.5, Seed resize from: 32x32, " in text
