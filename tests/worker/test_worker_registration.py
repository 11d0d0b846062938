"""The worker in the worker registry, and its claims preferring the models its engine holds loaded."""

from __future__ import annotations

import time
from collections.abc import Callable

from sdgate.core.jobs import JobState, WorkerInfo
from sdgate.core.requests import GenerationRequest
from sdgate.jobs.store import SqlJobStore
from sdgate.worker.registration import Registration
from sdgate.worker.runner import Worker
from tests.fakes import FakeEngine

MakeWorker = Callable[..., Worker]


class LoadedEngine(FakeEngine):
    """A fake engine that says which models it holds loaded and how much memory is free."""

    def __init__(self, loaded: list[str], **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.loaded = loaded

    def loaded_models(self) -> list[str]:
        return list(self.loaded)

    def free_memory_bytes(self) -> int | None:
        return 123


def _wait_for(check: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "not within the deadline"
        time.sleep(0.02)


def _only_worker(store: SqlJobStore) -> WorkerInfo:
    (info,) = store.list_workers()
    return info


def test_a_worker_is_registered_while_it_runs(store: SqlJobStore, make_worker: MakeWorker) -> None:
    engine = LoadedEngine(["sd15"], hold_at=(0, 1))
    worker = make_worker(engine, start=False)
    worker.start()
    try:
        info = _only_worker(store)
        assert (info.id, info.engine, info.models, info.free_memory_bytes) == (worker.worker_id, "fake",
                                                                                ("sd15",), 123)
        assert info.current_job_id is None and not info.stale

        job = store.submit(GenerationRequest(prompt="held"))
        assert engine.held.wait(5)
        _wait_for(lambda: _only_worker(store).current_job_id == job.id)  # reported soon, not in 5 s
        engine.loaded.append("sdxl")
        engine.release.set()
        _wait_for(lambda: store.get(job.id).state is JobState.SUCCEEDED)
        _wait_for(lambda: _only_worker(store).current_job_id is None)
        assert _only_worker(store).models == ("sd15", "sdxl")
    finally:
        assert worker.stop(timeout=10)
    assert store.list_workers() == []  # a clean stop leaves the registry


def test_the_worker_claims_the_job_of_its_loaded_model_first(
    store: SqlJobStore, make_worker: MakeWorker
) -> None:
    first = store.submit(GenerationRequest(prompt="a", model="model-a"))
    mine = store.submit(GenerationRequest(prompt="b", model="model-b"))
    worker = make_worker(LoadedEngine(["model-b"]), start=False)
    assert worker.run_once()
    assert store.get(mine.id).state is JobState.SUCCEEDED
    assert store.get(first.id).state is JobState.QUEUED


def test_a_worker_forgotten_by_the_registry_registers_again(store: SqlJobStore) -> None:
    current: list[str | None] = [None]
    registration = Registration(store, LoadedEngine(["m"]), "w-1", device="cpu",
                                current_job=lambda: current[0], report_s=0.1, min_interval_s=0.01)
    registration.start()
    try:
        store.remove_worker("w-1")  # as if forgotten while the database was unreachable
        _wait_for(lambda: [w.id for w in store.list_workers()] == ["w-1"])
        current[0] = "job_x"
        registration.changed()
        _wait_for(lambda: _only_worker(store).current_job_id == "job_x")
    finally:
        registration.stop()
    assert store.list_workers() == []


def test_a_registry_that_refuses_never_stops_the_worker(store: SqlJobStore, make_worker: MakeWorker) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise RuntimeError("database down")

    store.register_worker = refuse  # type: ignore[method-assign]
    store.worker_seen = refuse  # type: ignore[method-assign,assignment]
    store.remove_worker = refuse  # type: ignore[method-assign]
    make_worker(LoadedEngine([]))
    job = store.submit(GenerationRequest(prompt="still runs"))
    _wait_for(lambda: store.get(job.id).state is JobState.SUCCEEDED)
