"""Leases, the outbox and stored previews: the store's half of the process boundary. Two stores on
one SQLite file stand for two processes."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from alembic import command

from sdgate.core.jobs import Job, JobEventKind, JobState, Progress
from sdgate.core.requests import GenerationRequest
from sdgate.core.results import GenerationResult
from sdgate.jobs.database import SchemaMismatch, alembic_config, create_db_engine, transaction, upgrade_schema
from sdgate.jobs.events import JobEvents
from sdgate.jobs.outbox import OutboxFollower, to_event
from sdgate.jobs.schema import job_events, jobs
from sdgate.jobs.store import SqlJobStore


@pytest.fixture
def other(db_url: str) -> Iterator[SqlJobStore]:
    """A second process's store on the same database."""
    with SqlJobStore(db_url, lease_s=60) as s:
        yield s


def _lease(store: SqlJobStore, job_id: str) -> datetime:
    with store.database.connect() as conn:
        value = conn.execute(sa.select(jobs.c.lease_expires_at).where(jobs.c.id == job_id)).scalar_one()
    assert value is not None
    return jobs.c.lease_expires_at.type.process_result_value(value, store.database.dialect)  # type: ignore[no-any-return]


def test_a_live_lease_is_never_requeued_by_a_process_that_starts(
    store: SqlJobStore, other: SqlJobStore
) -> None:
    job = store.submit(GenerationRequest())
    assert store.claim_next("w1") is not None
    assert other.requeue_expired(max_attempts=2) == []  # "I just started" is no evidence of death
    assert other.get(job.id).state is JobState.RUNNING

    expiry = _lease(store, job.id)
    assert other.requeue_expired(max_attempts=2, now=expiry + timedelta(seconds=1)) == [job.id]
    assert other.get(job.id).state is JobState.QUEUED


def test_heartbeats_and_progress_renew_the_lease_of_its_holder_only(db_url: str) -> None:
    with SqlJobStore(db_url, lease_s=5) as store:
        job = store.submit(GenerationRequest())
        store.claim_next("w1")
        first = _lease(store, job.id)
        time.sleep(0.01)
        assert store.heartbeat(job.id, "w1")
        renewed = _lease(store, job.id)
        assert renewed > first
        assert not store.heartbeat(job.id, "someone-else")
        time.sleep(0.01)
        store.update_progress(job.id, Progress(step=1, steps=4))
        assert _lease(store, job.id) > renewed
        store.succeed(job.id, GenerationResult())
        assert not store.heartbeat(job.id, "w1")  # finished: nothing to hold


def test_a_requeued_job_is_no_longer_its_old_workers(store: SqlJobStore) -> None:
    job = store.submit(GenerationRequest())
    store.claim_next("w1")
    store.requeue_expired(max_attempts=2, now=datetime.now(UTC) + timedelta(hours=1))
    assert not store.heartbeat(job.id, "w1")
    assert store.claim_next("w2") is not None
    assert not store.heartbeat(job.id, "w1") and store.heartbeat(job.id, "w2")


def test_every_change_is_in_the_outbox_with_the_job_as_it_was(store: SqlJobStore) -> None:
    job = store.submit(GenerationRequest(prompt="outbox"))
    store.claim_next("w1")
    store.update_progress(job.id, Progress(step=2, steps=4))
    store.succeed(job.id, GenerationResult())
    with store.database.connect() as conn:
        rows = conn.execute(sa.select(job_events).order_by(job_events.c.seq)).all()
    assert [r.kind for r in rows] == ["queued", "started", "progress", "succeeded"]
    assert {r.origin for r in rows} == {store.origin}
    assert [r.job["state"] for r in rows] == ["queued", "running", "running", "succeeded"]
    assert rows[2].job["progress"]["step"] == 2


def test_a_follower_publishes_other_processes_changes_once_and_in_order(
    store: SqlJobStore, other: SqlJobStore, events: JobEvents
) -> None:
    follower = OutboxFollower(store.database, origin=store.origin, bus=events, poll_s=0.02)
    published: list[tuple[JobEventKind, Job]] = []
    events.add_listener(lambda kind, job: published.append((kind, job)))
    followed: list[int] = []
    follower.add_listener(lambda event: followed.append(event.seq))
    follower.start()
    try:
        mine = store.submit(GenerationRequest(prompt="mine"))  # published by the store itself
        theirs = other.submit(GenerationRequest(prompt="theirs"))
        other.claim_next("elsewhere")
        other.claim_next("elsewhere")
        other.succeed(mine.id, GenerationResult())
        deadline = time.monotonic() + 5
        while len(followed) < 5 and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        follower.stop()
    assert followed == sorted(followed) and len(followed) == 5
    assert [(k, j.id) for k, j in published] == [
        (JobEventKind.QUEUED, mine.id),
        (JobEventKind.QUEUED, theirs.id),
        (JobEventKind.STARTED, mine.id),
        (JobEventKind.STARTED, theirs.id),
        (JobEventKind.SUCCEEDED, mine.id),
    ]


def test_previews_are_stored_while_running_and_dropped_at_the_end(
    store: SqlJobStore, other: SqlJobStore
) -> None:
    job = store.submit(GenerationRequest())
    store.put_preview(job.id, b"queued", iteration=0, step=0)
    assert other.preview(job.id) is None  # only a running job has one
    store.claim_next("w1")
    store.put_preview(job.id, b"one", iteration=0, step=1)
    store.put_preview(job.id, b"two", iteration=0, step=2)
    assert other.preview(job.id) == b"two"
    store.succeed(job.id, GenerationResult())
    assert other.preview(job.id) is None


def test_a_job_left_running_before_leases_existed_is_recovered_after_the_upgrade(empty_db_url: str) -> None:
    url = empty_db_url
    engine = create_db_engine(url)
    now = datetime.now(UTC)
    try:
        config = alembic_config()
        with transaction(engine, write=True) as conn:
            config.attributes["connection"] = conn
            command.upgrade(config, "0002_native_api")
            conn.execute(sa.insert(jobs).values(
                id="job_old", state="running", dialect="native", priority=0, attempts=1,
                request=GenerationRequest().model_dump(mode="json"), meta={}, created_at=now,
                started_at=now, updated_at=now, worker_id="old-version",
            ))
            conn.execute(sa.insert(job_events).values(job_id="job_old", kind="started",
                                                      data={"state": "running"}, created_at=now))
        if engine.dialect.name == "postgresql":  # the nodes refuse it: an operator upgrades it once
            with pytest.raises(SchemaMismatch, match="run `sdgate db upgrade"):
                SqlJobStore(url)
            assert upgrade_schema(engine).before == "0002_native_api"  # what `sdgate db upgrade` runs
    finally:
        engine.dispose()
    with SqlJobStore(url) as store:  # SQLite: migrates to head
        assert store.requeue_expired(max_attempts=2) == ["job_old"]  # no lease: expired
        with store.database.connect() as conn:
            rows = conn.execute(sa.select(job_events).order_by(job_events.c.seq)).all()
        assert to_event(rows[0]) is None and rows[0].data == {"state": "running"}  # kept as it was
        requeued = to_event(rows[1])
        assert requeued is not None and requeued.kind is JobEventKind.QUEUED
