"""Module-scoped live-server fixtures shared by the Stability, OpenAI and Hugging Face tests (the
server itself: ``tests/harness.py``)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sdgate.core.engine import ModelDefaults
from sdgate.core.models import ModelCatalog
from sdgate.settings import Settings
from tests.fakes import FakeEngine, write_fake_checkpoint
from tests.harness import serve


def default_model_defaults(settings: Settings, engine_id: str | None = None) -> ModelDefaults:
    """The own defaults (native size, steps, VAE factor) of the model ``engine_id`` resolves to
    (``None``: the default model) under ``settings``."""
    from sdgate.server.model_aliases import resolve_model

    catalog = ModelCatalog(settings)
    return catalog.defaults_for(resolve_model(catalog, settings, engine_id, dialect="stability"))


# Module-scoped fixtures (each dialect's conftest imports them): one server per test module keeps
# the suite fast. They shadow tests/server/conftest.py's function-scoped ones of the same names;
# tests that need a server of their own call ``serve`` with a fresh data dir.


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("models")
    write_fake_checkpoint(root / "Stable-diffusion" / "alpha.safetensors")
    write_fake_checkpoint(root / "Stable-diffusion" / "sub" / "beta.safetensors")
    return root


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory, models_dir: Path) -> Settings:
    return Settings(
        data_dir=tmp_path_factory.mktemp("data"), models_dir=models_dir, device="cpu", worker_poll_s=0.05
    )


@pytest.fixture(scope="module")
def engine() -> FakeEngine:
    return FakeEngine(slow_step_s=0.02)


@pytest.fixture(scope="module")
def live(settings: Settings, engine: FakeEngine) -> Iterator[str]:
    with serve(settings, engine) as url:
        yield url


def fresh(settings: Settings, data_dir: Path, **update: Any) -> Settings:
    """``settings`` with its own data dir (a second server must not share the first one's queue)."""
    return settings.model_copy(update={"data_dir": data_dir, **update})
