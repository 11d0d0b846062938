"""Skip, interrupt, cancel and progress through the real pipeline loop."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pytest

from sdgate.core.engine import StepAction, StepReport
from sdgate.core.errors import JobCancelled
from sdgate.engine.diffusers_engine import DiffusersEngine
from tests.engine.conftest import generate, pixels


@dataclass
class Script:
    """A control that answers ``action`` at (iteration, step) and CONTINUE otherwise."""

    at: tuple[int, int] | None = None
    action: StepAction = StepAction.CONTINUE
    reports: list[StepReport] = field(default_factory=list)

    def on_step(self, report: StepReport) -> StepAction:
        self.reports.append(report)
        if (report.iteration, report.step) == self.at:
            return self.action
        return StepAction.CONTINUE


@pytest.mark.parametrize("sampler", ["Euler", "Heun", "PLMS", "DPM++ SDE"])
def test_every_step_is_reported_once(engine: DiffusersEngine, sampler: str) -> None:
    script = Script()
    generate(engine, script, sampler=sampler, steps=5, n_iter=2)
    seen = [(r.iteration, r.step, r.steps, r.iterations) for r in script.reports]
    assert seen == [(it, s, 5, 2) for it in range(2) for s in range(1, 6)]


def test_skip_abandons_one_iteration(engine: DiffusersEngine) -> None:
    script = Script(at=(0, 2), action=StepAction.SKIP)
    out = generate(engine, script, seed=100, batch_size=2, n_iter=2, steps=4)
    assert [img.seed for img in out.images] == [102, 103] and not out.interrupted
    assert [(r.iteration, r.step) for r in script.reports] == [(0, 1), (0, 2), (1, 1), (1, 2), (1, 3), (1, 4)]
    whole = generate(engine, seed=100, batch_size=2, n_iter=2, steps=4)
    assert np.array_equal(pixels(out)[0], pixels(whole)[2])  # the next iteration is untouched


def test_interrupt_keeps_what_exists_and_stops(engine: DiffusersEngine) -> None:
    script = Script(at=(1, 2), action=StepAction.INTERRUPT)
    out = generate(engine, script, seed=5, n_iter=3, steps=4)
    assert out.interrupted
    assert [img.seed for img in out.images] == [5, 6]  # iteration 1 decoded early, iteration 2 never ran
    assert max(r.iteration for r in script.reports) == 1
    whole = generate(engine, seed=5, n_iter=3, steps=4)
    assert np.array_equal(pixels(out)[0], pixels(whole)[0])
    assert not np.array_equal(pixels(out)[1], pixels(whole)[1])  # stopped half way


def test_cancel_raises(engine: DiffusersEngine) -> None:
    script = Script(at=(0, 1), action=StepAction.CANCEL)
    with pytest.raises(JobCancelled):
        generate(engine, script, steps=4)
    assert len(script.reports) == 1
    assert generate(engine, steps=2).images  # the engine is fine afterwards


def test_preview_is_a_cheap_rgb_image_of_the_latents(engine: DiffusersEngine) -> None:
    script = Script()
    generate(engine, script, width=48, height=32, steps=2)
    preview = script.reports[-1].preview
    assert preview is not None
    image = preview()
    assert image.mode == "RGB" and image.size == (6, 4)  # latent size: 48x32 over a VAE factor of 8
    first = script.reports[0].preview
    assert first is not None and first().tobytes() != image.tobytes()  # each step keeps its own latents


def test_sdxl_preview(engine: DiffusersEngine) -> None:
    script = Script()
    generate(engine, script, model="tiny-sdxl", steps=2)
    assert script.reports[-1].preview is not None
    assert script.reports[-1].preview().size == (8, 8)
