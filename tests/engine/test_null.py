"""The null engine: blank images of the asked size at once, with real seeds, infotexts and control."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from sdgate.core.engine import EngineInputs, NoControl, StepAction, StepReport
from sdgate.core.errors import InvalidRequest, JobCancelled, ModelNotFound
from sdgate.core.infotext import parse_infotext
from sdgate.core.models import ModelCatalog
from sdgate.core.requests import GenerationRequest
from sdgate.engine import create_engine
from sdgate.engine.null import NullEngine
from sdgate.settings import Settings


class Stop:
    def __init__(self, at: tuple[int, int], action: StepAction) -> None:
        self.at, self.action, self.reports = at, action, []  # type: ignore[var-annotated]

    def on_step(self, report: StepReport) -> StepAction:
        self.reports.append((report.iteration, report.step))
        return self.action if (report.iteration, report.step) == self.at else StepAction.CONTINUE


@pytest.fixture
def null(tiny_settings: Callable[..., Settings]) -> NullEngine:
    settings = tiny_settings(engine="null")
    engine = create_engine(settings, ModelCatalog(settings, builtin_dir=None))
    assert isinstance(engine, NullEngine)
    return engine


def run(engine: NullEngine, control: object = None, **fields: object) -> object:
    request = GenerationRequest(**{"prompt": "p", "model": "tiny-sd15", **fields})  # type: ignore[arg-type]
    return engine.generate(request, EngineInputs(), control or NoControl())  # type: ignore[arg-type]


def test_blank_images_of_the_asked_size_with_seeds_and_infotexts(null: NullEngine) -> None:
    out = run(null, width=64, height=32, batch_size=2, n_iter=2, seed=9, sampler="DPM++ 2M", steps=3)
    assert [img.image.size for img in out.images] == [(64, 32)] * 4  # type: ignore[attr-defined]
    assert [img.seed for img in out.images] == [9, 10, 11, 12]  # type: ignore[attr-defined]
    assert out.images[0].image.getextrema() == ((0, 0),) * 3  # type: ignore[attr-defined]
    params = parse_infotext(out.images[1].infotext)  # type: ignore[attr-defined]
    assert params["Seed"] == "10" and params["Schedule type"] == "Karras" and params["Steps"] == "3"
    assert out.scheduler == "karras" and out.steps == 3  # type: ignore[attr-defined]


def test_defaults_and_size_rules_are_the_models(null: NullEngine) -> None:
    out = run(null, model="tiny-sd15-diffusers", steps=1)
    assert out.images[0].image.size == (64, 64)  # type: ignore[attr-defined]
    with pytest.raises(InvalidRequest):
        run(null, width=66)
    run(null, model="tiny-sd15-f4", width=36, height=20, steps=1)


def test_works_with_no_models_at_all(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, models_dir=tmp_path / "none", engine="null")
    engine = NullEngine(settings, ModelCatalog(settings, builtin_dir=None))
    out = engine.generate(GenerationRequest.model_validate({"steps": 2}), EngineInputs(), NoControl())
    assert out.images[0].image.size == (512, 512) and out.model_name == "null"
    with pytest.raises(ModelNotFound):
        engine.model_defaults("missing")


def test_control_once_per_step(null: NullEngine) -> None:
    skip = Stop((0, 2), StepAction.SKIP)
    out = run(null, skip, n_iter=2, steps=3, seed=1)
    assert [img.seed for img in out.images] == [2]  # type: ignore[attr-defined]
    assert skip.reports == [(0, 1), (0, 2), (1, 1), (1, 2), (1, 3)]
    interrupt = Stop((0, 1), StepAction.INTERRUPT)
    out = run(null, interrupt, n_iter=3, steps=3)
    assert out.interrupted and len(out.images) == 1  # type: ignore[attr-defined]
    with pytest.raises(JobCancelled):
        run(null, Stop((1, 1), StepAction.CANCEL), n_iter=2, steps=2)


def test_null_engine_imports_without_torch() -> None:
    code = "import sys, sdgate.engine.null; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "False", out.stderr
