"""``--compile``: a worker loads (compiles, warms up) the default model before its first claim, so the
first job does not pay for it; without it, nothing loads ahead."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from sdgate.core.requests import GenerationRequest
from sdgate.jobs.store import SqlJobStore
from sdgate.settings import Settings
from sdgate.worker.runner import Worker
from tests.fakes import FakeEngine


class PreloadingEngine(FakeEngine):
    def __init__(self, fail: bool = False) -> None:
        super().__init__()
        self.order: list[tuple[str, str | None]] = []
        self.fail = fail

    def preload(self, model: str | None = None) -> str:
        self.order.append(("preload", model))
        if self.fail:
            raise RuntimeError("compiler crashed")
        return model or "default"

    def generate(self, request, inputs, control):  # type: ignore[no-untyped-def]
        self.order.append(("generate", request.prompt))
        return super().generate(request, inputs, control)


def _wait(predicate: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 10
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


@pytest.mark.parametrize("fail", [False, True])
def test_compile_preloads_the_default_model_before_the_first_job(
    store: SqlJobStore, settings: Settings, make_worker: Callable[..., Worker], fail: bool
) -> None:
    settings.compile = True
    settings.model = "tiny"
    job = store.submit(GenerationRequest(prompt="first", steps=1))
    engine = PreloadingEngine(fail=fail)
    make_worker(engine)
    _wait(lambda: store.get(job.id).state.value == "succeeded")
    # A failed preload is logged; the job still runs (it loads its model itself).
    assert engine.order == [("preload", "tiny"), ("generate", "first")]


def test_without_compile_nothing_loads_ahead(
    store: SqlJobStore, settings: Settings, make_worker: Callable[..., Worker]
) -> None:
    job = store.submit(GenerationRequest(prompt="first", steps=1))
    engine = PreloadingEngine()
    make_worker(engine)
    _wait(lambda: store.get(job.id).state.value == "succeeded")
    assert engine.order == [("generate", "first")]
