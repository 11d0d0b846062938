from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from sdgate.jobs.events import JobEvents
from sdgate.jobs.images import LocalImageStore
from sdgate.jobs.store import SqlJobStore
from sdgate.settings import Settings
from sdgate.worker.runner import Worker
from tests.fakes import FakeEngine


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path / "data", worker_poll_s=0.05)


@pytest.fixture
def events() -> JobEvents:
    return JobEvents()


@pytest.fixture
def store(settings: Settings, events: JobEvents) -> Iterator[SqlJobStore]:
    with SqlJobStore(settings.database_url, events=events) as s:
        yield s


@pytest.fixture
def images(settings: Settings) -> LocalImageStore:
    return LocalImageStore(settings.images_dir)


@pytest.fixture
def make_worker(
    store: SqlJobStore, images: LocalImageStore, events: JobEvents, settings: Settings
) -> Iterator[Callable[..., Worker]]:
    """Builds a worker over the shared store; started ones are stopped after the test."""
    started: list[Worker] = []

    def make(engine: FakeEngine, *, start: bool = True, **kwargs: object) -> Worker:
        worker = Worker(store, engine, images, events, settings, **kwargs)  # type: ignore[arg-type]
        if start:
            worker.start()
            started.append(worker)
        return worker

    yield make
    for worker in started:
        assert worker.stop(timeout=10)
