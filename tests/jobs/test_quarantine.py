"""Poison-job quarantine at start-up: a job left running by a dead process is re-queued once by
default, and failed for good when its process dies on it a second time."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sdgate.core.jobs import JobState
from sdgate.core.requests import GenerationRequest
from sdgate.jobs.store import SqlJobStore
from sdgate.settings import Settings

# Past every lease a claim just took: the worker that holds it has died.
_LATER = datetime.now(UTC) + timedelta(hours=1)


def test_a_job_that_kills_its_process_twice_is_failed_and_not_retried(store: SqlJobStore) -> None:
    max_attempts = Settings().job_max_attempts
    assert max_attempts == 2  # re-queued at most once more by default
    poison = store.submit(GenerationRequest(prompt="poison"))
    waiting = store.submit(GenerationRequest(prompt="waiting"))

    # 1. First death: the poison job was running; it is queued again, ahead of the one behind it.
    assert store.claim_next("w1").id == poison.id
    assert store.requeue_expired(now=_LATER, max_attempts=max_attempts) == [poison.id]
    assert store.get(poison.id).state is JobState.QUEUED
    assert store.get(waiting.id).state is JobState.QUEUED

    # 2. Second death: failed, with a clear error, and never re-queued.
    assert store.claim_next("w2").id == poison.id
    assert store.requeue_expired(now=_LATER, max_attempts=max_attempts) == []
    failed = store.get(poison.id)
    assert failed.state is JobState.FAILED and failed.attempts == 2
    assert failed.error is not None and failed.error["code"] == "worker_lost"
    assert "the worker died while running this job twice" in failed.error["message"]
    assert store.requeue_expired(now=_LATER, max_attempts=max_attempts) == []
    assert store.get(poison.id).state is JobState.FAILED

    # 3. Nothing submitted is lost: the queued job runs next.
    assert store.claim_next("w3").id == waiting.id


def test_other_jobs_running_at_death_are_requeued_once_each(store: SqlJobStore) -> None:
    first = store.submit(GenerationRequest(prompt="a"))
    second = store.submit(GenerationRequest(prompt="b"))
    store.claim_next("w1")
    store.claim_next("w2")  # two workers, both running when the process died

    assert sorted(store.requeue_expired(now=_LATER, max_attempts=2)) == sorted([first.id, second.id])
    assert [store.get(j.id).state for j in (first, second)] == [JobState.QUEUED] * 2
