"""GPU seconds per principal and UTC day, written in the transaction that ends a job.

    add_gpu_seconds(conn, principal, "2026-12-05", 3.2)   # inside the store's write transaction
    charge_run(conn, owner, started_at, finished_at)      # the same, from a finished job's row
    refund_unused(conn, row)                              # images reserved and not made, given back
    settle(conn, row)                                     # both, for a job that just ended

The ``daily_usage`` table (migration 0006) holds, per principal and UTC day, the images reserved
at submit (``quotas.py`` writes and reads those) and the GPU seconds its jobs ran. The store adds a
job's run time (``finished_at - started_at``) to its owner's row for the UTC day it finished, in
the transaction that records the job's terminal state, so a run is counted exactly once, on any
node, and survives a crash with the outcome itself. One upsert (``INSERT ... ON CONFLICT DO
UPDATE``, SQLAlchemy's SQLite or PostgreSQL insert): the row is made on first use with no images,
and an existing row's ``images`` are left alone.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from sdgate.jobs.quotas import principal_key
from sdgate.jobs.schema import daily_usage


def usage_day(when: datetime) -> str:
    """``when``'s UTC day as ``daily_usage`` keys it: ``YYYY-MM-DD``."""
    return when.astimezone(UTC).date().isoformat()


def add_gpu_seconds(conn: sa.Connection, principal: str, day: str, seconds: float) -> None:
    """Adds ``seconds`` to ``principal``'s GPU seconds of ``day`` (``YYYY-MM-DD``, UTC), inside the
    caller's transaction; makes the row (no images) on first use."""
    insert = pg_insert if conn.dialect.name == "postgresql" else sqlite_insert
    upsert = insert(daily_usage).values(principal=principal, day=day, images=0, gpu_seconds=seconds)
    conn.execute(
        upsert.on_conflict_do_update(
            index_elements=[daily_usage.c.principal, daily_usage.c.day],
            set_={"gpu_seconds": daily_usage.c.gpu_seconds + upsert.excluded.gpu_seconds},
        )
    )


def charge_run(conn: sa.Connection, owner: str | None, started_at: datetime | None,
               finished_at: datetime | None) -> None:
    """A job that ran and just ended: its run time goes to its owner's day. Nothing for an
    anonymous job (no owner) or one that never started; a clock that went backwards counts 0."""
    if owner is None or started_at is None or finished_at is None:
        return
    seconds = max(0.0, (finished_at - started_at).total_seconds())
    add_gpu_seconds(conn, owner, usage_day(finished_at), seconds)


def refund_unused(conn: sa.Connection, row: Any) -> None:
    """A job that just ended (its written row): the images reserved for it at submit that it did
    not make go back to its owner's count of the day they were reserved on, never below zero, in
    the caller's transaction. A job keeps what it delivered (a succeeded or cancelled job's result
    images); a failed one keeps none."""
    if row.reserved_images <= 0 or row.reserved_day is None:
        return
    delivered = 0
    if row.state in ("succeeded", "cancelled") and isinstance(row.result, dict):
        delivered = len(row.result.get("images") or ())
    refund_images(conn, row.owner, row.reserved_day, row.reserved_images - delivered)


def refund_images(conn: sa.Connection, owner: str | None, day: str | None, unused: int) -> None:
    """``unused`` images reserved on ``day`` go back to ``owner``'s count of that day, never below
    zero, in the caller's transaction (``refund_unused``, from what a job reserved and made)."""
    if unused <= 0 or day is None:
        return
    images = daily_usage.c.images
    conn.execute(
        sa.update(daily_usage)
        .where(daily_usage.c.principal == principal_key(owner), daily_usage.c.day == day)
        .values(images=sa.case((images >= unused, images - unused), else_=0))
    )


def settle(conn: sa.Connection, row: Any) -> None:
    """A job that just ended (its written row), in the transaction that ended it: its run charged
    to its owner's day (``charge_run``) and the images it reserved and did not make given back
    (``refund_unused``). Nothing for a job that never ran and reserved nothing."""
    charge_run(conn, row.owner, row.started_at, row.finished_at)
    refund_unused(conn, row)
