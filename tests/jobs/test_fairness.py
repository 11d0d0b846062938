"""Fair scheduling (SQLite and PostgreSQL): within one priority, claims alternate between owners, so
one owner's long queue does not starve another's single job; priority still wins, one owner's jobs
stay FIFO, model affinity still works, and a re-queued job keeps its place."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sdgate.core.requests import GenerationRequest
from sdgate.jobs.store import SqlJobStore


def _submit(store: SqlJobStore, owner: str | None, n: int = 0, *, priority: int = 0,
            model: str | None = None) -> str:
    request = GenerationRequest(prompt=f"{owner} {n}", model=model)
    return store.submit(request, owner=owner, priority=priority).id


def _claim(store: SqlJobStore, *prefer: str) -> str:
    job = store.claim_next("w", prefer_models=prefer)
    assert job is not None
    return job.id


def test_a_single_job_is_not_starved_by_another_owners_queue(store: SqlJobStore) -> None:
    a_jobs = [_submit(store, "key-a", i) for i in range(200)]
    b_job = _submit(store, "key-b")
    assert b_job in [_claim(store), _claim(store)]
    assert store.position(a_jobs[-1]) is not None


def test_a_single_job_is_not_starved_after_part_of_the_queue_ran(store: SqlJobStore) -> None:
    for i in range(50):
        _submit(store, "key-a", i)
    for _ in range(10):
        _claim(store)
    b_job = _submit(store, "key-b")
    assert store.position(b_job) in (0, 1)
    assert b_job in [_claim(store), _claim(store)]


def test_owners_alternate_and_each_owner_stays_fifo(store: SqlJobStore) -> None:
    a_jobs = [_submit(store, "key-a", i) for i in range(3)]
    b_jobs = [_submit(store, "key-b", i) for i in range(3)]
    anonymous = [_submit(store, None, i) for i in range(2)]
    claimed = [_claim(store) for _ in range(8)]
    assert claimed == [a_jobs[0], b_jobs[0], anonymous[0], a_jobs[1], b_jobs[1], anonymous[1],
                       a_jobs[2], b_jobs[2]]


def test_anonymous_jobs_count_as_one_owner(store: SqlJobStore) -> None:
    anonymous = [_submit(store, None, i) for i in range(5)]
    keyed = _submit(store, "key-a")
    assert _claim(store) == anonymous[0]
    assert _claim(store) == keyed


def test_priority_still_wins_over_fairness(store: SqlJobStore) -> None:
    for i in range(5):
        _submit(store, "key-a", i, priority=5)
    low = _submit(store, "key-b")
    claimed = [_claim(store) for _ in range(5)]
    assert low not in claimed
    assert _claim(store) == low


def test_a_later_job_of_an_owner_waits_behind_its_earlier_ones(store: SqlJobStore) -> None:
    first = [_submit(store, "key-a", i) for i in range(3)]
    for _ in range(2):
        _claim(store)
    later = _submit(store, "key-a", 99)
    assert _claim(store) == first[2]
    assert _claim(store) == later


def test_positions_follow_the_claim_order(store: SqlJobStore) -> None:
    a_jobs = [_submit(store, "key-a", i) for i in range(4)]
    b_job = _submit(store, "key-b")
    assert [store.position(j) for j in [*a_jobs, b_job]] == [0, 2, 3, 4, 1]


def test_model_affinity_still_works_across_owners(store: SqlJobStore) -> None:
    a_jobs = [_submit(store, "key-a", i, model="model-a") for i in range(3)]
    b_job = _submit(store, "key-b", model="model-b")
    assert _claim(store, "model-b") == b_job  # its loaded model first, though it is not the head
    assert _claim(store, "model-a") == a_jobs[0]
    assert _claim(store, "model-a") == a_jobs[1]


def test_model_affinity_picks_the_fair_order_among_its_models_jobs(store: SqlJobStore) -> None:
    _submit(store, "key-c", model="model-c")  # the head, of a model the worker does not hold
    a_jobs = [_submit(store, "key-a", i, model="model-a") for i in range(3)]
    b_job = _submit(store, "key-b", model="model-a")
    assert [_claim(store, "model-a") for _ in range(2)] == [a_jobs[0], b_job]


def test_a_requeued_job_goes_back_to_the_front(store: SqlJobStore) -> None:
    a_jobs = [_submit(store, "key-a", i) for i in range(5)]
    assert _claim(store) == a_jobs[0]
    for i in range(3):
        _submit(store, "key-b", i)
    later = datetime.now(UTC) + timedelta(seconds=store.lease_s + 1)
    assert store.requeue_expired(max_attempts=3, now=later) == [a_jobs[0]]
    assert _claim(store) == a_jobs[0]
