"""The worker's half of the lease: renewed while a step runs long, previews stored for other
processes, and a job whose lease went to another worker is left to it."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from sdgate.core.jobs import JobState
from sdgate.core.requests import GenerationRequest
from sdgate.jobs.events import JobEvents
from sdgate.jobs.images import LocalImageStore
from sdgate.jobs.store import SqlJobStore
from sdgate.settings import Settings
from sdgate.worker.runner import Worker
from tests.fakes import FakeEngine
from tests.worker.test_worker_runner import wait_for_state

LEASE_S = 0.3


@pytest.fixture
def leased(settings: Settings, events: JobEvents) -> Iterator[SqlJobStore]:
    with SqlJobStore(settings.database_url, events=events, lease_s=LEASE_S) as s:
        yield s


def _worker(store: SqlJobStore, engine: FakeEngine, settings: Settings, events: JobEvents) -> Worker:
    return Worker(store, engine, LocalImageStore(settings.images_dir), events, settings, worker_id="w1")


def test_a_step_longer_than_the_lease_keeps_the_job(
    leased: SqlJobStore, settings: Settings, events: JobEvents
) -> None:
    engine = FakeEngine(steps=3, hold_at=(0, 2))
    worker = _worker(leased, engine, settings, events)
    worker.start()
    try:
        job = leased.submit(GenerationRequest(prompt="long step"))
        assert engine.held.wait(10)
        time.sleep(LEASE_S * 4)  # no progress meanwhile: only the heartbeat renews the lease
        assert leased.requeue_expired(max_attempts=2) == []
        assert leased.get(job.id).state is JobState.RUNNING
        preview = leased.preview(job.id)  # step 1's, stored for whichever process asks
        assert preview is not None and preview.startswith(b"\x89PNG")
        engine.release.set()
        done = wait_for_state(leased, job.id, JobState.SUCCEEDED, JobState.FAILED)
        assert done.state is JobState.SUCCEEDED and done.attempts == 1
    finally:
        engine.release.set()
        assert worker.stop(timeout=10)


def test_a_job_handed_to_another_worker_is_left_to_it(
    leased: SqlJobStore, settings: Settings, events: JobEvents
) -> None:
    engine = FakeEngine(steps=2, hold_at=(0, 1))
    worker = _worker(leased, engine, settings, events)
    worker.start()
    try:
        job = leased.submit(GenerationRequest(prompt="taken"))
        assert engine.held.wait(10)
        # As if w1 had stalled past its lease: the job is re-queued and another worker claims it.
        leased.requeue_expired(max_attempts=2, now=datetime.now(UTC) + timedelta(hours=1))
        assert leased.claim_next("w2") is not None
        engine.release.set()
        deadline = time.monotonic() + LEASE_S * 3  # w1 finishes its engine call, records nothing
        while time.monotonic() < deadline:
            assert leased.heartbeat(job.id, "w2")  # w2 is alive and holds the job throughout
            time.sleep(0.05)
        again = leased.get(job.id)
        assert again.state is JobState.RUNNING and again.worker_id == "w2" and again.result is None
    finally:
        engine.release.set()
        assert worker.stop(timeout=10)
