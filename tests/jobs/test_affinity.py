"""Model affinity in claims (SQLite and PostgreSQL): a worker takes a job of a model it holds
loaded before older jobs of other models, but never passes over a job that waited long enough."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import sqlalchemy as sa

from sdgate.core.requests import GenerationRequest, PostprocessRequest
from sdgate.jobs.database import transaction
from sdgate.jobs.schema import jobs
from sdgate.jobs.store import SqlJobStore


def _submit(store: SqlJobStore, model: str | None, *, priority: int = 0) -> str:
    return store.submit(GenerationRequest(prompt=f"on {model}", model=model), priority=priority).id


def _claim(store: SqlJobStore, *prefer: str) -> str:
    job = store.claim_next("w", prefer_models=prefer)
    assert job is not None
    return job.id


def _age(store: SqlJobStore, job_id: str, seconds: float) -> None:
    """The job as if queued ``seconds`` ago."""
    with transaction(store.database, write=True) as conn:
        conn.execute(
            sa.update(jobs).where(jobs.c.id == job_id)
            .values(created_at=datetime.now(UTC) - timedelta(seconds=seconds))
        )


def test_a_worker_takes_the_job_of_its_loaded_model_first(store: SqlJobStore) -> None:
    a = _submit(store, "model-a")
    b = _submit(store, "model-b")
    assert _claim(store, "model-b") == b
    assert _claim(store, "model-a") == a


def test_without_preferences_the_queue_is_fifo(store: SqlJobStore) -> None:
    a = _submit(store, "model-a")
    _submit(store, "model-b")
    assert _claim(store) == a


def test_a_job_that_waited_the_affinity_window_is_not_passed_over(store: SqlJobStore) -> None:
    a = _submit(store, "model-a")
    b = _submit(store, "model-b")
    _age(store, a, store.affinity_s + 1)
    assert _claim(store, "model-b") == a
    assert _claim(store, "model-b") == b


def test_affinity_never_overrides_priority(store: SqlJobStore) -> None:
    urgent = _submit(store, "model-a", priority=5)
    _submit(store, "model-b")
    assert _claim(store, "model-b") == urgent


def test_the_first_of_several_preferred_jobs_goes_first(store: SqlJobStore) -> None:
    _submit(store, "model-a")
    c1 = _submit(store, "model-c")
    b1 = _submit(store, "model-b")
    assert _claim(store, "model-b", "model-c") == c1
    assert _claim(store, "model-b", "model-c") == b1


def test_jobs_without_a_model_and_odd_preferences_fall_back_to_fifo(store: SqlJobStore) -> None:
    default = _submit(store, None)
    extras = store.submit(PostprocessRequest(init_images=("img_x",))).id
    named = _submit(store, "model-b")
    assert _claim(store, "", "x" * 300, "nul\x00name") == default  # nothing a column holds: no error
    assert _claim(store, "model-b") == named
    assert _claim(store, "model-b") == extras


def test_the_model_column_is_filled_at_submit(store: SqlJobStore) -> None:
    named = _submit(store, "model-a")
    default = _submit(store, None)
    long_name = _submit(store, "m" * 300)
    with transaction(store.database, write=False) as conn:
        models = dict(conn.execute(sa.select(jobs.c.id, jobs.c.model)).all())
    assert models == {named: "model-a", default: None, long_name: None}
