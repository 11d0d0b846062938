from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from sdgate.core.jobs import Job, JobEventKind
from sdgate.jobs.events import JobEvents
from sdgate.jobs.store import SqlJobStore


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'jobs.db'}"


@pytest.fixture
def events() -> JobEvents:
    return JobEvents()


@pytest.fixture
def store(db_url: str, events: JobEvents) -> Iterator[SqlJobStore]:
    with SqlJobStore(db_url, events=events) as s:
        yield s


@pytest.fixture
def published(events: JobEvents) -> list[tuple[JobEventKind, Job]]:
    """Every event the store publishes, in order."""
    seen: list[tuple[JobEventKind, Job]] = []
    events.add_listener(lambda kind, job: seen.append((kind, job)))
    return seen
