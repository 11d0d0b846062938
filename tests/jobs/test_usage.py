"""GPU seconds per principal (SQLite and PostgreSQL): the transaction that ends a job that ran adds
its run time to its owner's row of the day, once; images reserved there are left alone."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from sdgate.core.errors import Conflict
from sdgate.core.jobs import ControlAction, JobState
from sdgate.core.requests import GenerationRequest
from sdgate.core.results import GenerationResult
from sdgate.jobs.database import transaction
from sdgate.jobs.schema import daily_usage, jobs
from sdgate.jobs.store import SqlJobStore
from sdgate.jobs.usage import add_gpu_seconds, usage_day


def _rows(store: SqlJobStore) -> dict[tuple[str, str], tuple[int, float]]:
    with transaction(store.database, write=False) as conn:
        rows = conn.execute(sa.select(daily_usage)).all()
    return {(r.principal, r.day): (r.images, r.gpu_seconds) for r in rows}


def _run(store: SqlJobStore, owner: str | None, seconds: float) -> str:
    """A job of ``owner`` claimed as if it started ``seconds`` ago."""
    job = store.submit(GenerationRequest(prompt="p"), owner=owner)
    claimed = store.claim_next("w")
    assert claimed is not None and claimed.id == job.id
    with transaction(store.database, write=True) as conn:
        conn.execute(sa.update(jobs).where(jobs.c.id == job.id)
                     .values(started_at=datetime.now(UTC) - timedelta(seconds=seconds)))
    return job.id


def test_add_gpu_seconds_makes_then_adds_to_the_row_and_keeps_images(store: SqlJobStore) -> None:
    with transaction(store.database, write=True) as conn:
        add_gpu_seconds(conn, "key-a", "2026-12-05", 1.5)
    assert _rows(store) == {("key-a", "2026-12-05"): (0, 1.5)}
    with transaction(store.database, write=True) as conn:
        conn.execute(sa.update(daily_usage).values(images=7))  # what a quota reservation writes
        add_gpu_seconds(conn, "key-a", "2026-12-05", 2.0)
        add_gpu_seconds(conn, "key-a", "2026-12-06", 0.25)
        add_gpu_seconds(conn, "key-b", "2026-12-05", 4.0)
    assert _rows(store) == {
        ("key-a", "2026-12-05"): (7, 3.5),
        ("key-a", "2026-12-06"): (0, 0.25),
        ("key-b", "2026-12-05"): (0, 4.0),
    }


@pytest.mark.parametrize("outcome", ["succeed", "fail", "cancelled"])
def test_a_finished_run_is_charged_to_its_owner_once(store: SqlJobStore, outcome: str) -> None:
    job_id = _run(store, "key-a", 3.0)
    if outcome == "succeed":
        done = store.succeed(job_id, GenerationResult(), worker_id="w")
    elif outcome == "fail":
        done = store.fail(job_id, {"code": "x", "message": "y"}, worker_id="w")
    else:
        done = store.cancelled(job_id, worker_id="w")
    assert done.finished_at is not None and done.started_at is not None
    ran = (done.finished_at - done.started_at).total_seconds()
    assert ran >= 3.0
    usage = _rows(store)
    assert list(usage) == [("key-a", usage_day(done.finished_at))]
    assert usage[("key-a", usage_day(done.finished_at))] == (0, pytest.approx(ran))
    with pytest.raises(Conflict):  # a second outcome is refused, and charges nothing
        store.fail(job_id, {"code": "x", "message": "again"}, worker_id="w")
    assert _rows(store) == usage


def test_runs_add_up_per_owner(store: SqlJobStore) -> None:
    for seconds in (1.0, 2.0):
        store.succeed(_run(store, "key-a", seconds), GenerationResult(), worker_id="w")
    store.succeed(_run(store, "key-b", 5.0), GenerationResult(), worker_id="w")
    usage = {principal: seconds for (principal, _), (_, seconds) in _rows(store).items()}
    assert usage["key-a"] == pytest.approx(3.0, abs=1.0)
    assert usage["key-b"] == pytest.approx(5.0, abs=1.0)
    assert usage["key-a"] >= 3.0 and usage["key-b"] >= 5.0


def test_nothing_is_charged_without_an_owner_or_a_run(store: SqlJobStore) -> None:
    store.succeed(_run(store, None, 2.0), GenerationResult(), worker_id="w")
    queued = store.submit(GenerationRequest(prompt="never ran"), owner="key-a")
    assert store.request_control(queued.id, ControlAction.CANCEL).state is JobState.CANCELLED
    assert _rows(store) == {}


def test_a_job_whose_worker_was_lost_is_charged_when_it_fails(store: SqlJobStore) -> None:
    job_id = _run(store, "key-a", 1.0)
    later = datetime.now(UTC) + timedelta(seconds=store.lease_s + 1)
    assert store.requeue_expired(max_attempts=1, now=later) == []
    assert store.get(job_id).state is JobState.FAILED
    ((principal, _day), (_images, seconds)), = _rows(store).items()
    assert principal == "key-a" and seconds >= 1.0
