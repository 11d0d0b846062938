"""Hires fix on the tiny SD 1.5: target sizes, both passes reported, upscalers, infotext."""

from __future__ import annotations

import numpy as np
import pytest

from sdgate.core.engine import StepAction, StepReport
from sdgate.core.errors import InvalidRequest
from sdgate.core.infotext import parse_infotext
from sdgate.core.requests import HiresSettings
from sdgate.engine.diffusers_engine import DiffusersEngine
from sdgate.engine.hires import target_size
from tests.engine.conftest import generate, pixels


class Recorder:
    def __init__(self) -> None:
        self.reports: list[tuple[int, int, int, int]] = []

    def on_step(self, report: StepReport) -> StepAction:
        self.reports.append((report.iteration, report.iterations, report.step, report.steps))
        return StepAction.CONTINUE


@pytest.mark.parametrize(
    ("size", "hires", "expected"),
    [
        ((64, 64), HiresSettings(scale=2), (128, 128, 128, 128)),
        ((64, 48), HiresSettings(scale=1.5), (96, 72, 96, 72)),
        ((64, 48), HiresSettings(scale=1.3), (80, 56, 80, 56)),  # down to multiples of 8
        ((64, 48), HiresSettings(resize_x=128), (128, 96, 128, 96)),  # aspect kept
        ((64, 48), HiresSettings(resize_y=96), (128, 96, 128, 96)),
        ((64, 48), HiresSettings(resize_x=96, resize_y=96), (128, 96, 96, 96)),  # cover, then crop
    ],
)
def test_target_size(size: tuple[int, int], hires: HiresSettings, expected: tuple[int, ...]) -> None:
    got = target_size(*size, hires, 8)
    assert (got.upscale_w, got.upscale_h, got.width, got.height) == expected


def test_hires_output_size_and_two_pass_progress(engine: DiffusersEngine) -> None:
    recorder = Recorder()
    hires = HiresSettings(scale=1.5, second_pass_steps=4, denoising_strength=0.5)
    out = generate(engine, recorder, hires=hires, width=64, height=48, n_iter=2)
    assert [img.image.size for img in out.images] == [(96, 72)] * 2
    # Each iteration is two A1111 "jobs": the first pass (3 steps), then hires (4 * 0.5 = 2 steps).
    assert recorder.reports == [
        (0, 4, 1, 3), (0, 4, 2, 3), (0, 4, 3, 3), (1, 4, 1, 2), (1, 4, 2, 2),
        (2, 4, 1, 3), (2, 4, 2, 3), (2, 4, 3, 3), (3, 4, 1, 2), (3, 4, 2, 2),
    ]  # fmt: skip
    params = parse_infotext(out.images[0].infotext)
    assert params["Size-1"] == "64" and params["Denoising strength"] == "0.5"
    assert (
        params["Hires upscale"] == "1.5"
        and params["Hires steps"] == "4"
        and params["Hires upscaler"] == "Latent"
    )


@pytest.mark.parametrize(
    "upscaler", ["Latent (bicubic antialiased)", "Latent (nearest-exact)", "Lanczos", "None"]
)
def test_upscalers(engine: DiffusersEngine, upscaler: str) -> None:
    out = generate(engine, hires=HiresSettings(scale=2, upscaler=upscaler, second_pass_steps=2))
    assert out.images[0].image.size == (128, 128)


def test_hires_is_deterministic_and_its_prompt_matters(engine: DiffusersEngine) -> None:
    hires = HiresSettings(scale=2, second_pass_steps=2)
    first = pixels(generate(engine, hires=hires))[0]
    assert np.array_equal(first, pixels(generate(engine, hires=hires))[0])
    other = HiresSettings(scale=2, second_pass_steps=2, prompt="a blue square", sampler="DPM++ 2M")
    assert not np.array_equal(first, pixels(generate(engine, hires=other))[0])


@pytest.mark.parametrize(
    "hires",
    [HiresSettings(upscaler="ESRGAN_4x"), HiresSettings(denoising_strength=1.5), HiresSettings(scale=0.01)],
)
def test_bad_hires_settings_are_refused(engine: DiffusersEngine, hires: HiresSettings) -> None:
    with pytest.raises(InvalidRequest):
        generate(engine, hires=hires)


def test_ddim_eta_reaches_the_hires_pass(engine: DiffusersEngine) -> None:
    """Euler ignores eta, so with DDIM only in the second pass a change of eta shows only there."""
    hires = HiresSettings(scale=1.5, second_pass_steps=4, denoising_strength=0.6, sampler="DDIM")
    fields = {"hires": hires, "width": 64, "height": 48, "sampler": "Euler", "seed": 3}
    plain = pixels(generate(engine, **fields))[0]
    assert np.array_equal(plain, pixels(generate(engine, eta=0.0, **fields))[0])  # DDIM's default
    noisy = pixels(generate(engine, eta=1.0, **fields))[0]
    assert not np.array_equal(plain, noisy)
