"""Claims for cross-request batching (SQLite and PostgreSQL): ``claim_group(..., batched=True)`` takes
the head and queued jobs of its priority and batch key; ``claim_batch_mates`` adds jobs of a given key
and priority up to a number of image rows. Each job is claimed once, with its own ``started`` event."""

from __future__ import annotations

from sdgate.core.batching import batch_key
from sdgate.core.jobs import Job, JobEventKind, JobState
from sdgate.core.requests import GenerationRequest
from sdgate.jobs.store import SqlJobStore
from tests.jobs.claiming import claim_concurrently


def _request(*, size: int = 64, batch_size: int = 1, n_iter: int = 1, alone: bool = False,
             prompt: str = "p") -> GenerationRequest:
    # A variation seed (subseed_strength) makes a job that always runs alone: no batch key.
    return GenerationRequest(prompt=prompt, width=size, height=size, batch_size=batch_size, n_iter=n_iter,
                             subseed_strength=0.5 if alone else 0.0)


def _submit(store: SqlJobStore, *, priority: int = 0, owner: str | None = None, **request: object) -> str:
    return store.submit(_request(**request), priority=priority, owner=owner).id  # type: ignore[arg-type]


KEY_64 = batch_key(_request())
KEY_128 = batch_key(_request(size=128))


def test_a_batched_claim_takes_the_head_and_mates_of_its_key_and_priority(
    store: SqlJobStore, published: list[tuple[JobEventKind, Job]]
) -> None:
    assert KEY_64 is not None and KEY_128 is not None and KEY_64 != KEY_128
    a = [_submit(store, prompt=f"a{i}") for i in range(2)]
    other_size = _submit(store, size=128)
    a.append(_submit(store, prompt="a2"))
    urgent = _submit(store, priority=5)
    alone = _submit(store, alone=True)
    a.append(_submit(store, prompt="a3"))

    # Priority first: the urgent job's key is the same, but no job of priority 0 joins it.
    assert [j.id for j in store.claim_group("w", limit=8, batched=True)] == [urgent]
    group = store.claim_group("w", limit=3, batched=True)
    assert [j.id for j in group] == a[:3]
    assert all(j.state is JobState.RUNNING and j.worker_id == "w" and j.attempts == 1 for j in group)
    started = [job.id for kind, job in published if kind is JobEventKind.STARTED]
    assert started == [urgent, *a[:3]]
    # The head is now the 128-pixel job: its key has no queued mates.
    assert [j.id for j in store.claim_group("w", limit=8, batched=True)] == [other_size]
    # A head with no key is claimed alone, although a keyed job waits behind it.
    assert [j.id for j in store.claim_group("w", limit=8, batched=True)] == [alone]
    assert [j.id for j in store.claim_group("w", limit=8, batched=True)] == [a[3]]
    assert store.claim_group("w", limit=8, batched=True) == []


def test_batch_mates_fill_the_rows_left_in_claim_order(
    store: SqlJobStore, published: list[tuple[JobEventKind, Job]]
) -> None:
    assert KEY_64 is not None
    two = _submit(store, batch_size=2)  # 2 rows
    six = _submit(store, batch_size=3, n_iter=2)  # 6 rows: too many for what is left, passed over
    other_key = _submit(store, size=128)
    other_priority = _submit(store, priority=1)
    alone = _submit(store, alone=True)
    one = _submit(store)
    three = _submit(store, n_iter=3)

    mates = store.claim_batch_mates("w", batch_key=KEY_64, priority=0, max_rows=4)
    assert [j.id for j in mates] == [two, one]  # 2 + 1 rows; `three` would make 6
    assert all(j.state is JobState.RUNNING and j.worker_id == "w" for j in mates)
    assert [job.id for kind, job in published if kind is JobEventKind.STARTED] == [two, one]
    assert [j.id for j in store.claim_batch_mates("w", batch_key=KEY_64, priority=0, max_rows=3)] == [three]
    assert store.claim_batch_mates("w", batch_key=KEY_64, priority=0, max_rows=5) == []  # `six` needs 6
    assert [j.id for j in store.claim_batch_mates("w", batch_key=KEY_64, priority=0, max_rows=6)] == [six]
    assert store.claim_batch_mates("w", batch_key=KEY_64, priority=0, max_rows=0) == []
    assert store.claim_batch_mates("w", batch_key="no\x00key", priority=0, max_rows=8) == []
    for job_id in (other_key, other_priority, alone):
        assert store.get(job_id).state is JobState.QUEUED


def test_batch_mates_follow_fair_order_across_owners(store: SqlJobStore) -> None:
    assert KEY_64 is not None
    a = [_submit(store, owner="key-a") for _ in range(3)]
    b = _submit(store, owner="key-b")
    mates = store.claim_batch_mates("w", batch_key=KEY_64, priority=0, max_rows=3)
    assert [j.id for j in mates] == [a[0], b, a[1]]


def test_concurrent_batched_claims_take_each_job_once(db_url: str) -> None:
    """Two kinds of claim at once, from four workers: SKIP LOCKED (and the state guard) give each job
    to exactly one of them."""
    assert KEY_64 is not None and KEY_128 is not None
    with SqlJobStore(db_url) as store:
        ids = {_submit(store, size=64 if i % 3 else 128, batch_size=1 + i % 2) for i in range(60)}

        def take(worker: str) -> list[Job]:
            group = store.claim_group(worker, limit=4, batched=True)
            for key in (KEY_64, KEY_128):
                group += store.claim_batch_mates(worker, batch_key=key, priority=0, max_rows=3)
            return group

        claimed = claim_concurrently(take)
        assert sorted(claimed) == sorted(ids)
        assert all(store.get(job_id).attempts == 1 for job_id in ids)
