"""The evaluator on a small fixed held-out set: the shipped model stays above the targets."""

from __future__ import annotations

import pytest

from sdgate.demo import evaluate as ev
from sdgate.demo import model as dm


@pytest.mark.slow
def test_shipped_model_meets_the_targets_on_a_fixed_held_out_set() -> None:
    pipe = dm.load_pipeline()
    settings = ev.EvalSettings(n_one=12, n_two=8, size=512, steps=20, batch=4, n_img2img=4, n_inpaint=4)
    report = ev.evaluate(pipe, settings)
    assert report.passed(), report.table()
    assert report.img2img_keep is not None and report.img2img_keep >= 0.75, report.table()
    assert report.inpaint_changed is not None and report.inpaint_changed >= 0.75, report.table()
    assert report.inpaint_outside_mae is not None and report.inpaint_outside_mae <= 3.0, report.table()


def test_report_checks_every_target() -> None:
    settings = ev.EvalSettings(n_one=1, n_two=1)
    good_one = {k: v for k, v in ev.TARGETS_ONE.items()}
    good_two = {"background": 1.0, "position": 0.0, **ev.TARGETS_TWO}
    assert ev.EvalReport(settings, one=good_one, two=good_two).passed()
    for key in ev.TARGETS_ONE:
        assert not ev.EvalReport(settings, one={**good_one, key: good_one[key] - 0.01}, two=good_two).passed()
    for key in ev.TARGETS_TWO:
        assert not ev.EvalReport(settings, one=good_one, two={**good_two, key: good_two[key] - 0.01}).passed()
