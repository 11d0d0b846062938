"""The model cache: least recently used models go first when a new one would not fit."""

from __future__ import annotations

from collections.abc import Callable

from sdgate.core.models import ModelCatalog
from sdgate.engine.cache import ModelCache
from sdgate.engine.diffusers_engine import DiffusersEngine
from sdgate.settings import Settings
from tests.engine.conftest import generate


def test_lru_eviction_under_a_budget() -> None:
    evicted: list[str] = []
    cache: ModelCache[str] = ModelCache(100, on_evict=lambda key, _: evicted.append(key))
    cache.put("a", "A", 40)
    cache.put("b", "B", 40)
    assert cache.get("a") == "A"  # a is now the most recently used
    cache.put("c", "C", 40)
    assert evicted == ["b"] and cache.keys_by_age() == ["a", "c"] and cache.used_bytes == 80
    cache.put("huge", "H", 500)  # bigger than the budget: loads alone
    assert cache.keys_by_age() == ["huge"] and evicted == ["b", "a", "c"]
    cache.make_room(10, keep="huge")
    assert cache.keys_by_age() == ["huge"]
    cache.clear()
    assert cache.keys_by_age() == [] and cache.get("huge") is None


def test_engine_unloads_the_least_recently_used_model(tiny_settings: Callable[..., Settings]) -> None:
    one_model = 3 * 2**20  # each tiny model is ~1-2 MiB in fp32
    settings = tiny_settings(model_cache_bytes=one_model * 2 - 1)
    engine = DiffusersEngine(settings, ModelCatalog(settings, builtin_dir=None))
    generate(engine, model="tiny-sd15", steps=1)
    generate(engine, model="tiny-sd15-f4", steps=1)
    generate(engine, model="tiny-sd15", steps=1)  # touch: f4 is now the least recently used
    generate(engine, model="tiny-sdxl", steps=1)
    names = [key.rsplit("/", 1)[-1] for key in engine.cache.keys_by_age()]
    assert "tiny-sd15-f4.safetensors" not in names and names[-1] == "tiny-sdxl.safetensors"
    assert engine.cache.used_bytes <= (settings.model_cache_bytes or 0) or len(names) == 1
    engine.unload()
    assert engine.cache.keys_by_age() == []


def test_a_cached_model_is_not_loaded_again(tiny_settings: Callable[..., Settings]) -> None:
    settings = tiny_settings()
    engine = DiffusersEngine(settings, ModelCatalog(settings, builtin_dir=None))
    first = generate(engine, steps=1)
    again = generate(engine, steps=1)
    assert again.timings["load"] < 0.05 <= first.timings["load"] + 0.05
    assert engine.memory_stats() is None  # CPU: no CUDA numbers
