"""Images reserved at submit and not made are given back when the job ends (SQLite and
PostgreSQL), by every way a job ends: an outcome alone or in ``finish_many``, a queued job
cancelled, a job whose worker was lost failed by the lease sweep. What a job made stays counted."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from sdgate.core.errors import Conflict
from sdgate.core.jobs import ControlAction, JobState, Outcome, Reservation
from sdgate.core.requests import GenerationRequest
from sdgate.core.results import GenerationResult, StoredImage
from sdgate.jobs.quotas import Quotas
from sdgate.jobs.store import SqlJobStore

DAY = "2026-03-01"
LIMIT = 20


@pytest.fixture
def quotas(store: SqlJobStore) -> Quotas:
    return Quotas(store.database)


def _submit(store: SqlJobStore, quotas: Quotas, images: int, owner: str | None = "key-a") -> str:
    """A job of ``images`` images, reserved as the server's admission does before it submits."""
    assert quotas.reserve_images(owner or "", images, limit=LIMIT, day=DAY)
    request = GenerationRequest(prompt="p", batch_size=images)
    return store.submit(request, owner=owner, reservation=Reservation(images, DAY)).id


def _claimed(store: SqlJobStore, quotas: Quotas, images: int, owner: str | None = "key-a") -> str:
    job_id = _submit(store, quotas, images, owner)
    claimed = store.claim_next("w")
    assert claimed is not None and claimed.id == job_id
    return job_id


def _result(images: int) -> GenerationResult:
    return GenerationResult(images=tuple(
        StoredImage(id=f"img_{i:064x}", seed=i, width=8, height=8, infotext="") for i in range(images)
    ))


def used(quotas: Quotas, owner: str = "key-a") -> int:
    return quotas.usage(owner, DAY).images


def test_a_failed_job_gives_its_images_back_and_a_succeeded_one_keeps_them(
    store: SqlJobStore, quotas: Quotas
) -> None:
    kept = _claimed(store, quotas, 3)
    store.succeed(kept, _result(3), worker_id="w")
    assert used(quotas) == 3
    failed = _claimed(store, quotas, 4)
    assert used(quotas) == 7
    store.fail(failed, {"code": "boom", "message": "it broke"}, worker_id="w")
    assert used(quotas) == 3
    # An interrupted job (fewer images than asked) gives back the rest; a cancelled one all.
    short = _claimed(store, quotas, 4)
    store.succeed(short, _result(1), worker_id="w")
    assert used(quotas) == 4
    cancelled = _claimed(store, quotas, 2)
    store.cancelled(cancelled, worker_id="w")
    assert used(quotas) == 4


def test_a_second_end_gives_nothing_back_twice(store: SqlJobStore, quotas: Quotas) -> None:
    job_id = _claimed(store, quotas, 2)
    store.fail(job_id, {"code": "x", "message": "y"}, worker_id="w")
    _submit(store, quotas, 2)  # 2 more reserved by another job
    assert used(quotas) == 2
    with pytest.raises(Conflict):  # already failed
        store.fail(job_id, {"code": "x", "message": "again"}, worker_id="w")
    assert used(quotas) == 2


def test_finish_many_gives_back_per_job(store: SqlJobStore, quotas: Quotas) -> None:
    ids = [_submit(store, quotas, n) for n in (1, 2, 3)]
    assert [job.id for job in store.claim_group("w", limit=3)] == ids
    assert used(quotas) == 6
    store.finish_many([
        Outcome(ids[0], JobState.SUCCEEDED, result=_result(1)),
        Outcome(ids[1], JobState.FAILED, error={"code": "x", "message": "y"}),
        Outcome(ids[2], JobState.SUCCEEDED, result=_result(2)),
    ], worker_id="w")
    assert used(quotas) == 3


def test_a_queued_job_cancelled_and_a_lost_one_failed_give_back(store: SqlJobStore, quotas: Quotas) -> None:
    queued = _submit(store, quotas, 2, owner=None)  # the anonymous principal's row
    assert used(quotas, "") == 2
    assert store.request_control(queued, ControlAction.CANCEL).state is JobState.CANCELLED
    assert used(quotas, "") == 0
    lost = _claimed(store, quotas, 3)
    later = datetime.now(UTC) + timedelta(seconds=store.lease_s + 1)
    assert store.requeue_expired(max_attempts=1, now=later) == []
    assert store.get(lost).state is JobState.FAILED
    assert used(quotas) == 0


def test_without_a_reservation_nothing_is_touched(store: SqlJobStore, quotas: Quotas) -> None:
    assert quotas.reserve_images("key-a", 5, limit=LIMIT, day=DAY)  # another request's reservation
    job = store.submit(GenerationRequest(prompt="p"), owner="key-a")
    assert store.claim_next("w") is not None
    store.fail(job.id, {"code": "x", "message": "y"}, worker_id="w")
    assert used(quotas) == 5
