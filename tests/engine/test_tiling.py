"""Seamless tiling: circular padding per job, restored afterwards, and pictures that wrap."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from sdgate.engine.diffusers_engine import DiffusersEngine
from sdgate.engine.tiling import seamless
from tests.engine.conftest import generate, pixels


def _pipe(engine: DiffusersEngine) -> Any:
    return engine._get_model(engine.catalog.resolve("tiny-sd15")).pipeline


def _modes(pipe: Any) -> list[str]:
    return [
        m.padding_mode for c in (pipe.unet, pipe.vae) for m in c.modules() if isinstance(m, torch.nn.Conv2d)
    ]


def seam_ratio(picture: np.ndarray) -> float:
    """Mean |first column - last column| over the mean |column - next column|: ~1 for a tile."""
    a = picture.astype(np.float64)
    seam = np.abs(a[:, 0] - a[:, -1]).mean()
    inner = np.abs(np.diff(a, axis=1)).mean()
    return float(seam / inner)


def test_the_switch_is_per_block_and_restores_every_mode(engine: DiffusersEngine) -> None:
    pipe = _pipe(engine)
    before = _modes(pipe)
    assert set(before) == {"zeros"}
    with seamless(pipe, True) as count:
        assert count == len(before) > 10
        assert set(_modes(pipe)) == {"circular"}
    assert _modes(pipe) == before
    with pytest.raises(RuntimeError), seamless(pipe, True):
        raise RuntimeError("a failing job")
    assert _modes(pipe) == before  # restored on errors too
    with seamless(pipe, False) as count:
        assert count == 0 and _modes(pipe) == before


def test_tiled_unet_and_vae_are_shift_equivariant(engine: DiffusersEngine) -> None:
    """On a torus, rolling the latent rolls the output: the property that makes a tile seamless."""
    pipe = _pipe(engine)
    factor = 2 ** (len(pipe.vae.config.block_out_channels) - 1)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, 4, 8, 8, generator=gen)
    text = torch.randn(1, 77, pipe.unet.config.cross_attention_dim, generator=gen)

    def unet(latent: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return pipe.unet(latent, 500, encoder_hidden_states=text).sample  # type: ignore[no-any-return]

    def vae(latent: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return pipe.vae.decode(latent).sample  # type: ignore[no-any-return]

    shift = 2 ** (len(pipe.unet.config.block_out_channels) - 1)  # a whole cell of the deepest level
    rolled = torch.roll(x, shift, dims=-1)
    with seamless(pipe, True):
        torch.testing.assert_close(unet(rolled), torch.roll(unet(x), shift, dims=-1), atol=1e-4, rtol=1e-4)
        expected = torch.roll(vae(x), shift * factor, dims=-1)
        torch.testing.assert_close(vae(rolled), expected, atol=1e-4, rtol=1e-4)
    shift_error = (unet(rolled) - torch.roll(unet(x), shift, dims=-1)).abs().max()
    assert shift_error > 1e-3  # zero padding sees the edges: the check above can fail


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_tiled_picture_wraps_left_to_right(engine: DiffusersEngine, seed: int) -> None:
    plain = pixels(generate(engine, seed=seed))[0]
    tiled_out = generate(engine, seed=seed, tiling=True)
    tiled = pixels(tiled_out)[0]
    assert seam_ratio(tiled) < seam_ratio(plain)
    assert seam_ratio(tiled) < 1.0  # the edge pair is no further apart than neighbours are
    assert seam_ratio(np.swapaxes(tiled, 0, 1)) < 1.0  # and top continues bottom
    assert "Tiling: True, " in tiled_out.images[0].infotext
    assert "Tiling" not in generate(engine, seed=seed).images[0].infotext


def test_the_next_job_without_tiling_is_bit_identical(engine: DiffusersEngine) -> None:
    before = pixels(generate(engine, seed=11, sampler="Euler a"))[0]
    tiled = pixels(generate(engine, seed=11, sampler="Euler a", tiling=True))[0]
    after = pixels(generate(engine, seed=11, sampler="Euler a"))[0]
    assert not np.array_equal(before, tiled)
    assert np.array_equal(before, after)
