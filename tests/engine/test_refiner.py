"""Refiner and hires checkpoint on the tiny models: where the switch happens, what carries over.

``legacy/tiny-sd15.ckpt`` holds the same weights as ``tiny-sd15`` in another file: as a refiner it
runs the whole switch (another pipeline, the scheduler resumed mid-loop), so any state lost or
noise added at the switch shows as a pixel difference from the run without a refiner.
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from sdgate.core.engine import EngineInputs, NoControl, StepAction, StepReport
from sdgate.core.errors import InvalidRequest
from sdgate.core.infotext import parse_infotext
from sdgate.core.requests import GenerationRequest, HiresSettings, Mode
from sdgate.engine.diffusers_engine import DiffusersEngine
from sdgate.engine.refiner import switch_step
from tests.engine.conftest import generate, pixels

SAME_WEIGHTS = "legacy/tiny-sd15.ckpt"


class Recorder:
    """Records (step, steps) and each step's latent preview; interrupts after ``stop_at``."""

    def __init__(self, stop_at: int | None = None) -> None:
        self.steps: list[tuple[int, int, int, int]] = []
        self.previews: list[np.ndarray] = []
        self.stop_at = stop_at

    def on_step(self, report: StepReport) -> StepAction:
        self.steps.append((report.iteration, report.iterations, report.step, report.steps))
        assert report.preview is not None
        self.previews.append(np.asarray(report.preview()))
        if self.stop_at is not None and report.step >= self.stop_at:
            return StepAction.INTERRUPT
        return StepAction.CONTINUE


@pytest.mark.parametrize(("at", "steps", "main"), [(0.8, 20, 16), (0.7, 10, 7), (0.5, 5, 3), (0.01, 5, 1)])
def test_switch_step(at: float, steps: int, main: int) -> None:
    assert switch_step(at, steps) == main


@pytest.mark.parametrize("sampler", ["Euler", "DPM++ 2M", "Euler a", "Heun"])
def test_same_weights_refiner_draws_the_same_image(engine: DiffusersEngine, sampler: str) -> None:
    base = generate(engine, sampler=sampler, steps=5)
    refined = generate(engine, sampler=sampler, steps=5, refiner=SAME_WEIGHTS, refiner_switch_at=0.5)
    params = parse_infotext(refined.images[0].infotext)
    assert params["Refiner"].startswith("tiny-sd15 [") and params["Refiner switch at"] == "0.5"
    assert params["Model"] == "tiny-sd15"
    np.testing.assert_array_equal(pixels(base)[0], pixels(refined)[0])


def test_a_switch_after_the_last_step_is_no_switch(engine: DiffusersEngine) -> None:
    base = generate(engine, steps=5)
    late = generate(engine, steps=5, refiner="tiny-sd2-v", refiner_switch_at=0.99)  # ceil(4.95) = 5
    assert "Refiner" not in parse_infotext(late.images[0].infotext)
    np.testing.assert_array_equal(pixels(base)[0], pixels(late)[0])


def test_the_main_model_itself_is_no_switch(engine: DiffusersEngine) -> None:
    out = generate(engine, steps=3, refiner="tiny-sd15", refiner_switch_at=0.5)
    assert "Refiner" not in parse_infotext(out.images[0].infotext)  # A1111 does not switch either


def test_another_refiner_changes_only_the_late_steps(engine: DiffusersEngine) -> None:
    base_rec, ref_rec, again_rec = Recorder(), Recorder(), Recorder()
    base = generate(engine, base_rec, steps=5)
    refined = generate(engine, ref_rec, steps=5, refiner="tiny-sd2-v", refiner_switch_at=0.6)
    again = generate(engine, again_rec, steps=5, refiner="tiny-sd2-v", refiner_switch_at=0.6)
    # Progress counts 1..5 across the switch, once each.
    assert ref_rec.steps == [(0, 1, s, 5) for s in range(1, 6)]
    # Steps 1-3 are the main model's (ceil(0.6 * 5) = 3), the rest the refiner's.
    for step in range(3):
        np.testing.assert_array_equal(base_rec.previews[step], ref_rec.previews[step])
    assert not np.array_equal(base_rec.previews[3], ref_rec.previews[3])
    assert not np.array_equal(pixels(base)[0], pixels(refined)[0])
    np.testing.assert_array_equal(pixels(refined)[0], pixels(again)[0])  # deterministic
    assert parse_infotext(refined.images[0].infotext)["Refiner"].startswith("tiny-sd2-v [")


def test_sdxl_refiner_on_sd15_goes_through_both_vaes(engine: DiffusersEngine) -> None:
    recorder = Recorder()
    base = generate(engine, steps=4)
    out = generate(engine, recorder, steps=4, refiner="tiny-sdxl", refiner_switch_at=0.5, batch_size=2)
    assert [img.image.size for img in out.images] == [(64, 64)] * 2
    assert [s[2] for s in recorder.steps] == [1, 2, 3, 4]
    assert not np.array_equal(pixels(base)[0], pixels(out)[0])
    assert parse_infotext(out.images[0].infotext)["Refiner"].startswith("tiny-sdxl [")


def test_interrupt_before_the_switch_keeps_the_main_models_image(engine: DiffusersEngine) -> None:
    out = generate(engine, Recorder(stop_at=1), steps=4, refiner="tiny-sd2-v", refiner_switch_at=0.5)
    assert out.interrupted and len(out.images) == 1
    assert "Refiner" not in parse_infotext(out.images[0].infotext)


def test_interrupt_after_the_switch_stops_the_refiner(engine: DiffusersEngine) -> None:
    recorder = Recorder(stop_at=3)
    out = generate(engine, recorder, steps=5, refiner="tiny-sd2-v", refiner_switch_at=0.4)
    assert out.interrupted and [s[2] for s in recorder.steps] == [1, 2, 3]


def test_img2img_refiner_counts_its_own_steps(engine: DiffusersEngine) -> None:
    init = Image.new("RGB", (64, 64), (200, 30, 30))
    request = GenerationRequest(
        mode=Mode.IMG2IMG, prompt="a red circle", model="tiny-sd15", width=64, height=64, steps=8,
        seed=7, init_images=("-",), denoising_strength=0.5,
    )  # fmt: skip
    inputs = EngineInputs(init_images=(init,))
    base = engine.generate(request, inputs, NoControl())
    recorder = Recorder()
    same = engine.generate(
        request.model_copy(update={"refiner": SAME_WEIGHTS, "refiner_switch_at": 0.5}), inputs, recorder
    )
    assert [s[2:] for s in recorder.steps] == [(s, 4) for s in range(1, 5)]  # 8 * 0.5 steps run
    assert "Refiner" in parse_infotext(same.images[0].infotext)
    np.testing.assert_array_equal(pixels(base)[0], pixels(same)[0])
    other = engine.generate(request.model_copy(update={"refiner": "tiny-sd2-v", "refiner_switch_at": 0.5}),
                            inputs, NoControl())  # fmt: skip
    assert not np.array_equal(pixels(base)[0], pixels(other)[0])


def test_hires_on_another_checkpoint(engine: DiffusersEngine) -> None:
    hires = HiresSettings(scale=1.5, second_pass_steps=4, denoising_strength=0.5)
    same = generate(engine, hires=hires)
    same_weights = generate(engine, hires=hires.model_copy(update={"checkpoint": SAME_WEIGHTS}))
    other = generate(engine, hires=hires.model_copy(update={"checkpoint": "tiny-sd2-v"}))
    np.testing.assert_array_equal(pixels(same)[0], pixels(same_weights)[0])
    assert not np.array_equal(pixels(same)[0], pixels(other)[0])
    assert other.images[0].image.size == (96, 96)
    params = parse_infotext(other.images[0].infotext)
    assert params["Hires checkpoint"].startswith("tiny-sd2-v [") and params["Model"] == "tiny-sd15"
    assert "Hires checkpoint" not in (same.images[0].infotext or "")


def test_hires_on_sdxl_with_an_image_upscaler_and_a_refiner(engine: DiffusersEngine) -> None:
    recorder = Recorder()
    hires = HiresSettings(scale=1.5, second_pass_steps=4, denoising_strength=0.5, checkpoint="tiny-sdxl")
    out = generate(engine, recorder, hires=hires, refiner="tiny-sd2-v", refiner_switch_at=0.5)
    latent = generate(engine, hires=hires.model_copy(update={"upscaler": "Lanczos"}))
    assert out.images[0].image.size == latent.images[0].image.size == (96, 96)
    # The refiner switches in the hires pass only (A1111's default), which counts 1..2 on.
    assert [s[2:] for s in recorder.steps] == [(1, 3), (2, 3), (3, 3), (1, 2), (2, 2)]
    params = parse_infotext(out.images[0].infotext)
    assert params["Hires checkpoint"].startswith("tiny-sdxl [") and params["Refiner"].startswith("tiny-sd2-v")


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"refiner": "tiny-sd2-v"}, "refiner_switch_at"),
        ({"refiner": "tiny-sd2-v", "refiner_switch_at": 1.0}, "refiner_switch_at"),
        ({"refiner": "tiny-sd2-v", "refiner_switch_at": 0.0}, "refiner_switch_at"),
        ({"refiner": "no-such-model", "refiner_switch_at": 0.5}, "refiner"),
        ({"hires": HiresSettings(checkpoint="no-such-model")}, "hires.checkpoint"),
    ],
)
def test_bad_values_name_the_field(engine: DiffusersEngine, fields: dict, field: str) -> None:
    with pytest.raises(InvalidRequest) as err:
        generate(engine, **fields)
    assert err.value.field == field
