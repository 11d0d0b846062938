"""The worker registry: one row per worker in the ``workers`` table, written by the worker itself.

    registry = WorkerRegistry(store._tx, ttl_s=WORKER_TTL_S)   # the store's transactions
    registry.register(info)                       # at start (an upsert: a restart replaces its row)
    registry.seen(worker_id, models=..., free_memory_bytes=..., current_job_id=...)  # every few s
    registry.remove(worker_id)                    # a clean stop
    registry.workers()                            # for ``GET /api/v1/cluster`` and ``sdgate status``

``SqlJobStore`` exposes these as ``register_worker`` / ``worker_seen`` / ``remove_worker`` /
``list_workers`` (the ``JobStore`` port). Liveness is judged by ``last_seen`` alone, as a job's by its
lease: a row not refreshed within ``ttl_s`` is stale (its worker died, or lost the database), and
one silent for ``forget_s`` is deleted by the next report of any worker. A worker whose row was
deleted meanwhile learns it from ``seen`` (False) and registers again.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from contextlib import AbstractContextManager
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from sdgate.core.jobs import WorkerInfo
from sdgate.jobs.schema import workers

# A worker reports every WORKER_REPORT_S (``worker/registration.py``): three missed reports make it stale.
WORKER_TTL_S = 15.0
# A stale row is kept this long for operators to see which worker died, then deleted.
WORKER_FORGET_S = 3600.0


def _now() -> datetime:
    return datetime.now(UTC)


Transaction = Callable[..., AbstractContextManager[sa.Connection]]  # tx(write=...) -> connection


class WorkerRegistry:
    """``tx``: how the store opens a transaction (``tx(write=True)``), so registry writes take turns
    with the store's own where they must (an in-memory SQLite database is one connection)."""

    def __init__(self, tx: Transaction, *, ttl_s: float = WORKER_TTL_S,
                 forget_s: float = WORKER_FORGET_S) -> None:
        self._tx = tx
        self.ttl_s = ttl_s
        self.forget_s = forget_s

    def register(self, info: WorkerInfo, *, now: datetime | None = None) -> None:
        now = now or _now()
        values: dict[str, Any] = {
            "id": info.id,
            "host": info.host,
            "pid": info.pid,
            "device": info.device,
            "engine": info.engine,
            "models": list(info.models),
            "free_memory_bytes": info.free_memory_bytes,
            "current_job_id": info.current_job_id,
            "started_at": info.started_at,
            "last_seen": now,
        }
        with self._tx(write=True) as conn:
            insert = pg_insert if conn.dialect.name == "postgresql" else sqlite_insert
            upsert = insert(workers).values(values)
            conn.execute(
                upsert.on_conflict_do_update(
                    index_elements=[workers.c.id],
                    set_={k: upsert.excluded[k] for k in values if k != "id"},
                )
            )
            self._forget_silent(conn, now)

    def seen(
        self,
        worker_id: str,
        *,
        models: Collection[str],
        free_memory_bytes: int | None,
        current_job_id: str | None,
        now: datetime | None = None,
    ) -> bool:
        now = now or _now()
        with self._tx(write=True) as conn:
            updated = conn.execute(
                sa.update(workers)
                .where(workers.c.id == worker_id)
                .values(models=list(models), free_memory_bytes=free_memory_bytes,
                        current_job_id=current_job_id, last_seen=now)
            ).rowcount
            self._forget_silent(conn, now)
        return bool(updated)

    def remove(self, worker_id: str) -> None:
        with self._tx(write=True) as conn:
            conn.execute(sa.delete(workers).where(workers.c.id == worker_id))

    def workers(self, *, now: datetime | None = None) -> list[WorkerInfo]:
        """Every row, oldest worker first, stale ones marked."""
        now = now or _now()
        with self._tx(write=False) as conn:
            rows = conn.execute(sa.select(workers).order_by(workers.c.started_at, workers.c.id)).all()
        stale_before = now - timedelta(seconds=self.ttl_s)
        return [
            WorkerInfo(
                id=row.id,
                host=row.host,
                pid=row.pid,
                device=row.device,
                engine=row.engine,
                models=tuple(str(m) for m in row.models or ()),
                free_memory_bytes=row.free_memory_bytes,
                current_job_id=row.current_job_id,
                started_at=row.started_at,
                last_seen=row.last_seen,
                stale=row.last_seen < stale_before,
            )
            for row in rows
        ]

    def _forget_silent(self, conn: sa.Connection, now: datetime) -> None:
        conn.execute(sa.delete(workers).where(workers.c.last_seen < now - timedelta(seconds=self.forget_s)))
