"""Idempotency keys: one job per (caller, key, body), atomically, for 24 h."""

from __future__ import annotations

import asyncio
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from sdgate.core.errors import Conflict, InvalidRequest, QueueFull
from sdgate.jobs import idempotency
from sdgate.jobs.database import transaction
from sdgate.jobs.idempotency import IdempotencyKeys, canonical_hash, check_key
from sdgate.jobs.images import LocalImageStore
from sdgate.jobs.retention import Retention
from sdgate.jobs.schema import idempotency_keys
from sdgate.jobs.store import SqlJobStore


def _recorded(store: SqlJobStore, key: tuple[str, str], job_id: str) -> str:
    """What ``JobStore.submit(idempotency_key=key)`` does in the job's transaction: the key records
    the job. (These tests' submissions make no job row, only an id.)"""
    with transaction(store.database, write=True) as conn:
        conn.execute(sa.update(idempotency_keys)
                     .where(idempotency_keys.c.scope == key[0], idempotency_keys.c.key == key[1],
                            idempotency_keys.c.job_id.is_(None))
                     .values(job_id=job_id))
    return job_id


def test_canonical_hash_ignores_key_order_and_whitespace() -> None:
    assert canonical_hash({"a": 1, "b": [1, 2]}) == canonical_hash({"b": [1, 2], "a": 1})
    assert canonical_hash({"a": 1}) != canonical_hash({"a": 2})


@pytest.mark.parametrize("key", ["", "x" * 256, "tab\there", "ünï"])
def test_bad_keys_are_refused(key: str) -> None:
    with pytest.raises(InvalidRequest):
        check_key(key)


async def test_eight_concurrent_duplicates_make_one_job(store: SqlJobStore) -> None:
    keys = IdempotencyKeys(store.database, ttl_s=3600)
    calls = 0
    lock = threading.Lock()

    async def submit(key: tuple[str, str]) -> str:
        nonlocal calls
        with lock:
            calls += 1
        await asyncio.sleep(0.05)  # a slow submission: the others must wait, not submit
        return _recorded(store, key, f"job_{calls}")

    results = await asyncio.gather(*(keys.run("ann", "k1", "h", submit) for _ in range(8)))
    assert calls == 1
    assert {job_id for job_id, _ in results} == {"job_1"}
    assert sorted(created for _, created in results) == [False] * 7 + [True]


async def test_other_body_conflicts_and_scopes_are_separate(store: SqlJobStore) -> None:
    keys = IdempotencyKeys(store.database, ttl_s=3600)

    async def submit(key: tuple[str, str]) -> str:
        return _recorded(store, key, "job_a")

    assert await keys.run("ann", "k", "h1", submit) == ("job_a", True)
    with pytest.raises(Conflict):
        await keys.run("ann", "k", "h2", submit)
    assert await keys.run("bob", "k", "h2", submit) == ("job_a", True)  # another caller's key


async def test_a_failed_submission_releases_the_key(store: SqlJobStore) -> None:
    keys = IdempotencyKeys(store.database, ttl_s=3600)

    async def full(key: tuple[str, str]) -> str:
        raise QueueFull("full")

    async def ok(key: tuple[str, str]) -> str:
        return _recorded(store, key, "job_b")

    with pytest.raises(QueueFull):
        await keys.run("", "k", "h", full)
    assert await keys.run("", "k", "h", ok) == ("job_b", True)


def _pending_claim(store: SqlJobStore, age_s: float) -> None:
    """A claim made ``age_s`` ago whose request never recorded a job nor released it (its node was
    killed, or lost the database, in between)."""
    now = datetime.now(UTC)
    with transaction(store.database, write=True) as conn:
        conn.execute(sa.insert(idempotency_keys).values(
            scope="", key="k", body_hash="h", job_id=None, created_at=now - timedelta(seconds=age_s),
            expires_at=now + timedelta(hours=1)))


async def test_an_abandoned_claim_is_taken_over(store: SqlJobStore) -> None:
    keys = IdempotencyKeys(store.database, ttl_s=3600)
    _pending_claim(store, idempotency.PENDING_WAIT_S + 1)

    async def ok(key: tuple[str, str]) -> str:
        return _recorded(store, key, "job_c")

    with pytest.raises(Conflict):  # another body is still another body
        await keys.run("", "k", "other", ok)
    assert await keys.run("", "k", "h", ok) == ("job_c", True)
    assert await keys.run("", "k", "h", ok) == ("job_c", False)


async def test_a_retry_waits_for_a_pending_claim_to_be_abandoned(
    store: SqlJobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(idempotency, "PENDING_WAIT_S", 0.5)
    keys = IdempotencyKeys(store.database, ttl_s=3600)
    _pending_claim(store, 0)

    async def ok(key: tuple[str, str]) -> str:
        return _recorded(store, key, "job_d")

    started = asyncio.get_running_loop().time()
    assert await keys.run("", "k", "h", ok) == ("job_d", True)
    assert asyncio.get_running_loop().time() - started >= 0.4


async def test_expired_keys_are_free_again_and_purged(store: SqlJobStore, tmp_path: Path) -> None:
    keys = IdempotencyKeys(store.database, ttl_s=3600)

    async def first(key: tuple[str, str]) -> str:
        return _recorded(store, key, "job_1")

    async def second(key: tuple[str, str]) -> str:
        return _recorded(store, key, "job_2")

    await keys.run("", "k", "h", first)
    with transaction(store.database, write=True) as conn:
        conn.execute(sa.update(idempotency_keys).values(expires_at=datetime.now(UTC) - timedelta(seconds=1)))
    assert await keys.run("", "k", "other body", second) == ("job_2", True)
    with transaction(store.database, write=True) as conn:
        conn.execute(sa.update(idempotency_keys).values(expires_at=datetime.now(UTC) - timedelta(seconds=1)))
    assert Retention(store, LocalImageStore(tmp_path), ttl_s=None).run_once()["keys"] == 1


async def test_a_job_committed_with_its_key_is_found_by_the_retry(store: SqlJobStore) -> None:
    """The job and its key commit together: when the answer is lost after the commit (the node or
    the database went away), the retry with the same key finds that job, not a second one."""
    from sdgate.core.requests import GenerationRequest

    keys = IdempotencyKeys(store.database, ttl_s=3600)
    made: list[str] = []

    async def lost_answer(key: tuple[str, str]) -> str:
        job = await asyncio.to_thread(store.submit, GenerationRequest(prompt="x"), idempotency_key=key)
        made.append(job.id)
        raise ConnectionError("the answer was lost after the commit")

    async def again(key: tuple[str, str]) -> str:
        job = await asyncio.to_thread(store.submit, GenerationRequest(prompt="x"), idempotency_key=key)
        made.append(job.id)
        return job.id

    with pytest.raises(ConnectionError):
        await keys.run("", "k", "h", lost_answer)
    assert await keys.run("", "k", "h", again) == (made[0], False)  # no wait, no takeover
    assert len(made) == 1 and [j.id for j in store.list()] == made
