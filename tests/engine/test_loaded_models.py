"""What an engine says it holds loaded and how much memory is free (the worker registry shows it
and claims prefer the jobs of those models)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from sdgate.core.engine import free_memory_bytes, loaded_models
from sdgate.core.models import ModelCatalog
from sdgate.engine.diffusers_engine import DiffusersEngine
from sdgate.engine.null import NullEngine
from sdgate.settings import Settings
from tests.engine.conftest import generate


def test_the_diffusers_engine_names_its_cached_models_most_recent_first(
    tiny_settings: Callable[..., Settings],
) -> None:
    settings = tiny_settings(model_cache_bytes=2**30)
    engine = DiffusersEngine(settings, ModelCatalog(settings, builtin_dir=None))
    assert loaded_models(engine) == []
    generate(engine, model="tiny-sd15", steps=1)
    generate(engine, model="tiny-sd15-f4", steps=1)
    generate(engine, model="tiny-sd15", steps=1)
    assert loaded_models(engine) == ["tiny-sd15", "tiny-sd15-f4"]
    assert free_memory_bytes(engine) is None  # CPU: no CUDA numbers
    engine.unload()
    assert loaded_models(engine) == []


def test_an_evicted_model_is_no_longer_named(tiny_settings: Callable[..., Settings]) -> None:
    settings = tiny_settings(model_cache_bytes=1)  # one model at a time
    engine = DiffusersEngine(settings, ModelCatalog(settings, builtin_dir=None))
    generate(engine, model="tiny-sd15", steps=1)
    generate(engine, model="tiny-sd15-f4", steps=1)
    assert loaded_models(engine) == ["tiny-sd15-f4"]


def test_the_null_engine_holds_its_default_model(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, models_dir=tmp_path / "none", engine="null")
    engine = NullEngine(settings, ModelCatalog(settings, builtin_dir=None))
    assert loaded_models(engine) == ["null"] and free_memory_bytes(engine) is None


def test_an_engine_that_does_not_say_holds_nothing() -> None:
    assert loaded_models(object()) == [] and free_memory_bytes(None) is None
