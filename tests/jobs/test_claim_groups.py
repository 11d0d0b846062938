"""Claiming a group of jobs in one transaction (SQLite and PostgreSQL): the job ``claim_next`` would
take, then queued jobs of its priority and model in claim order; each claimed exactly once, with
its own ``started`` event."""

from __future__ import annotations

from sdgate.core.jobs import Job, JobEventKind, JobState
from sdgate.core.requests import GenerationRequest
from sdgate.jobs.store import SqlJobStore
from tests.jobs.claiming import claim_concurrently


def _submit(store: SqlJobStore, *, model: str | None = None, priority: int = 0,
            owner: str | None = None) -> str:
    return store.submit(GenerationRequest(prompt="p", model=model), priority=priority, owner=owner).id


def test_a_group_is_the_head_then_its_priority_and_model_in_claim_order(
    store: SqlJobStore, published: list[tuple[JobEventKind, Job]]
) -> None:
    a = [_submit(store) for _ in range(3)]
    other_model = _submit(store, model="model-b")
    a.append(_submit(store))
    urgent = _submit(store, priority=5)
    assert [j.id for j in store.claim_group("w", limit=8)] == [urgent]  # priority first, alone
    group = store.claim_group("w", limit=3)
    assert [j.id for j in group] == a[:3]
    assert all(j.state is JobState.RUNNING and j.worker_id == "w" and j.attempts == 1 for j in group)
    started = [job.id for kind, job in published if kind is JobEventKind.STARTED]
    assert started == [urgent, *a[:3]]
    # The head is now the other model's job: its group holds none of the default model's.
    assert [j.id for j in store.claim_group("w", limit=8)] == [other_model]
    assert [j.id for j in store.claim_group("w", limit=8)] == [a[3]]
    assert store.claim_group("w", limit=8) == []


def test_a_group_follows_fair_order_across_owners(store: SqlJobStore) -> None:
    a = [_submit(store, owner="key-a") for _ in range(4)]
    b = _submit(store, owner="key-b")
    assert [j.id for j in store.claim_group("w", limit=3)] == [a[0], b, a[1]]


def test_a_group_starts_with_the_job_of_a_loaded_model(store: SqlJobStore) -> None:
    _submit(store, model="model-a")
    b = [_submit(store, model="model-b") for _ in range(2)]
    assert [j.id for j in store.claim_group("w", prefer_models=["model-b"], limit=4)] == b


def test_concurrent_group_claims_take_each_job_once(db_url: str) -> None:
    with SqlJobStore(db_url) as store:
        ids = {_submit(store) for _ in range(60)}
        claimed = claim_concurrently(lambda worker: store.claim_group(worker, limit=5))
        assert sorted(claimed) == sorted(ids)
