"""One engine for the engine tests: loading the tiny models once keeps the suite fast."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from sdgate.core.engine import EngineInputs, EngineOutput, GenerationControl, NoControl
from sdgate.core.models import ModelCatalog
from sdgate.core.requests import GenerationRequest
from sdgate.engine.diffusers_engine import DiffusersEngine
from sdgate.settings import Settings


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread() -> Iterator[None]:
    """Tiny models gain nothing from threads, and on a shared CPU a second thread spinning on a busy
    core makes each call ~30x slower: the engine tests run single-threaded (and restore it)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def engine(tiny_models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> DiffusersEngine:
    settings = Settings(data_dir=tmp_path_factory.mktemp("data"), models_dir=tiny_models_dir, device="cpu")
    return DiffusersEngine(settings, ModelCatalog(settings, builtin_dir=None))


def generate(
    engine: DiffusersEngine, control: GenerationControl | None = None, **fields: object
) -> EngineOutput:
    """A small, fast txt2img job on the tiny SD 1.5 unless ``fields`` say otherwise."""
    values: dict[str, object] = {
        "prompt": "a red circle",
        "model": "tiny-sd15",
        "width": 64,
        "height": 64,
        "steps": 3,
        "seed": 1234,
    }
    values.update(fields)
    return engine.generate(GenerationRequest(**values), EngineInputs(), control or NoControl())  # type: ignore[arg-type]


def pixels(output: EngineOutput) -> list[np.ndarray]:
    return [np.asarray(img.image) for img in output.images]
