"""``Idempotency-Key``: the same POST sent twice makes one job.

A key is scoped to its caller and remembered for ``ttl_s``. The first request for a key *claims* it
by inserting ``(scope, key)`` (the primary key makes exactly one of any number of concurrent
inserts win, on SQLite and PostgreSQL alike), submits its job, then records the job id. A duplicate
with the same body hash gets that job (waiting briefly while the first request is still submitting);
one with another body is a ``Conflict``. A claim whose submission failed is released, so the client
can retry with the same key. A claim still pending after ``PENDING_WAIT_S`` was abandoned (its node
died, or lost the database before it could record a job or release the claim): the next request
with the key and body takes it over instead of answering 409 until the key expires. Expired keys
are deleted by the retention task, and a deleted job's keys with it (``sdgate.jobs.retention``).

    keys = IdempotencyKeys(store.database, ttl_s=86400)
    job_id, created = await keys.run(scope, key, body_hash, submit)  # submit() runs at most once
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa

from sdgate.core.errors import Conflict, InvalidRequest
from sdgate.jobs.database import transaction
from sdgate.jobs.schema import idempotency_keys as keys_table

MAX_KEY_LENGTH = 255
# How long a duplicate waits for the first request to record its job before giving up.
PENDING_WAIT_S = 30.0
_POLL_S = 0.02
# A duplicate waits a little longer than a claim may stay pending, so it takes an abandoned claim
# over rather than giving up just before (the claim's age is read from another node's clock).
_TAKEOVER_MARGIN_S = 5.0


def canonical_hash(body: Any) -> str:
    """SHA-256 of the body as canonical JSON (sorted keys, no whitespace)."""
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def check_key(key: str) -> str:
    if not key or len(key) > MAX_KEY_LENGTH or not key.isprintable() or not key.isascii():
        raise InvalidRequest(
            f"Idempotency-Key: must be 1 to {MAX_KEY_LENGTH} printable ASCII characters",
            field="Idempotency-Key",
        )
    return key


def _now() -> datetime:
    return datetime.now(UTC)


def _abandoned_before(now: datetime) -> datetime:
    """A claim made before this and still without a job was abandoned: any live submission would
    have recorded its job or released the claim by now."""
    return now - timedelta(seconds=PENDING_WAIT_S)


class IdempotencyKeys:
    def __init__(self, database: sa.Engine, *, ttl_s: float) -> None:
        self._db = database
        self._ttl = timedelta(seconds=ttl_s)

    async def run(
        self, scope: str, key: str, body_hash: str, submit: Callable[[tuple[str, str]], Awaitable[str]]
    ) -> tuple[str, bool]:
        """The job id for ``key`` and whether this call created it. ``submit((scope, key))`` creates
        the job and must record it on the key in the job's own transaction
        (``JobStore.submit(idempotency_key=...)``): then a job never exists without its key, and a
        retry after an answer lost on the way (a node or the database gone) finds that job."""
        check_key(key)
        deadline = asyncio.get_running_loop().time() + PENDING_WAIT_S + _TAKEOVER_MARGIN_S
        while True:
            claimed, row = await asyncio.to_thread(self._claim, scope, key, body_hash)
            if claimed:
                break
            assert row is not None
            if row.body_hash != body_hash:
                raise Conflict(
                    "Idempotency-Key was already used with a different request body", field="Idempotency-Key"
                )
            if row.job_id is not None:
                return row.job_id, False
            if asyncio.get_running_loop().time() > deadline:
                raise Conflict("a request with this Idempotency-Key is still being processed",
                               field="Idempotency-Key")
            await asyncio.sleep(_POLL_S)
        try:
            job_id = await submit((scope, key))
        except BaseException:
            await asyncio.to_thread(self._release, scope, key)  # only while it records no job
            raise
        return job_id, True

    def _claim(self, scope: str, key: str, body_hash: str) -> tuple[bool, sa.Row[Any] | None]:
        """(True, None) when this call now owns the key, else (False, the existing row)."""
        now = _now()
        where = sa.and_(keys_table.c.scope == scope, keys_table.c.key == key)
        with transaction(self._db, write=True) as conn:
            row = conn.execute(sa.select(keys_table).where(where)).one_or_none()
            cutoff = _abandoned_before(now)
            if (row is not None and row.job_id is None and row.body_hash == body_hash
                    and row.expires_at > now and row.created_at <= cutoff):
                taken = conn.execute(  # one of any concurrent retries takes it over
                    sa.update(keys_table)
                    .where(where, keys_table.c.job_id.is_(None), keys_table.c.created_at <= cutoff)
                    .values(created_at=now, expires_at=now + self._ttl)
                )
                return (True, None) if taken.rowcount == 1 else (False, row)
            if row is not None and row.expires_at > now:
                return False, row
            if row is not None:  # expired: the key is free again
                conn.execute(sa.delete(keys_table).where(where))
            try:
                with conn.begin_nested():
                    conn.execute(
                        sa.insert(keys_table).values(
                            scope=scope, key=key, body_hash=body_hash, job_id=None,
                            created_at=now, expires_at=now + self._ttl,
                        )
                    )
            except sa.exc.IntegrityError:  # another process inserted it first (PostgreSQL)
                row = conn.execute(sa.select(keys_table).where(where)).one()
                return False, row
        return True, None

    def _release(self, scope: str, key: str) -> None:
        with transaction(self._db, write=True) as conn:
            conn.execute(
                sa.delete(keys_table).where(
                    keys_table.c.scope == scope, keys_table.c.key == key, keys_table.c.job_id.is_(None)
                )
            )
