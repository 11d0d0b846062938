"""Per-principal limits kept in the database, so they hold across API nodes (see ``admission.py``).

Two tables (migration 0006), one row per principal (``principal``: what its jobs store as their
owner; ``ANONYMOUS`` for the anonymous principal of a server without credentials):

- ``rate_buckets``: a token bucket per principal for its request rate. The bucket holds at most
  ``burst`` tokens and refills at ``rate_per_min / 60`` tokens a second, computed lazily from
  ``updated_at`` when a request takes one. Read and written under a row lock (PostgreSQL:
  ``SELECT ... FOR UPDATE``; SQLite: the write transaction's lock), so two nodes never spend one
  token twice. The row is made on first use, full.
- ``daily_usage``: per principal and UTC day (``YYYY-MM-DD``), images reserved at submit and the GPU
  seconds its finished jobs took (written by ``jobs/usage.py``). A reservation is one conditional
  upsert that refuses when ``images + n > limit``: concurrent submits on any node never overshoot.

Time comes from ``clock`` (a callable giving an aware UTC ``datetime``): the wall clock in
production, a fake one in tests.

    quotas = Quotas(store.database)
    wait = quotas.take_token("key_1", rate_per_min=60)      # None: taken; else seconds to wait
    if quotas.reserve_images("key_1", 4, limit=500, day=utc_day(quotas.now())): ...
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from sdgate.jobs.database import transaction
from sdgate.jobs.schema import daily_usage, rate_buckets

Clock = Callable[[], datetime]
# The row of the anonymous principal (a server without credentials: one caller). No Basic user or
# API key id can be empty.
ANONYMOUS = ""


USAGE_KEEP = timedelta(days=35)
BUCKET_IDLE = timedelta(days=7)


def wall_clock() -> datetime:
    return datetime.now(UTC)


def utc_day(now: datetime) -> str:
    """``now``'s UTC day as ``daily_usage`` keys it: ``YYYY-MM-DD``."""
    return now.astimezone(UTC).date().isoformat()


def seconds_to_next_day(now: datetime) -> float:
    """Seconds from ``now`` to the next UTC midnight (when a day's quotas start over)."""
    now = now.astimezone(UTC)
    midnight = datetime(now.year, now.month, now.day, tzinfo=UTC) + timedelta(days=1)
    return (midnight - now).total_seconds()


def principal_key(principal_id: str | None) -> str:
    """The rows' ``principal`` for a principal's id (``None``: the anonymous principal)."""
    return ANONYMOUS if principal_id is None else principal_id


@dataclass(frozen=True)
class DailyUsage:
    images: int = 0
    gpu_seconds: float = 0.0


class Quotas:
    """The rate buckets and daily usage of every principal, over the job database."""

    def __init__(self, database: sa.Engine, *, clock: Clock = wall_clock) -> None:
        self._db = database
        self.clock = clock

    def now(self) -> datetime:
        return self.clock()

    # -- request rate ----------------------------------------------------------------------------

    def take_token(self, principal: str, *, rate_per_min: float, burst: int | None = None) -> float | None:
        """Takes one token from ``principal``'s bucket: ``None`` when it had one, else the seconds
        until the next one is there (nothing is taken). ``burst``: the bucket's size (default: one
        minute's worth, at least one)."""
        rate = rate_per_min / 60.0
        if rate <= 0:
            return float("inf")  # a zero rate admits nothing, ever
        size = float(burst if burst is not None else max(1.0, rate_per_min))
        now = self.clock()
        with transaction(self._db, write=True) as conn:
            row = self._locked_bucket(conn, principal, size, now)
            elapsed = max(0.0, (now - row.updated_at).total_seconds())
            tokens = min(size, row.tokens + elapsed * rate)
            wait = None if tokens >= 1.0 else (1.0 - tokens) / rate
            if wait is None:
                tokens -= 1.0
            # A node whose clock is behind another's never moves the bucket's time back (which
            # would refill it twice over the same seconds).
            conn.execute(
                sa.update(rate_buckets)
                .where(rate_buckets.c.principal == principal)
                .values(tokens=tokens, updated_at=max(now, row.updated_at))
            )
        return wait

    def _locked_bucket(self, conn: sa.Connection, principal: str, size: float, now: datetime) -> Any:
        """``principal``'s bucket row, locked until the transaction ends; made full on first use."""
        query = sa.select(rate_buckets.c.tokens, rate_buckets.c.updated_at).where(
            rate_buckets.c.principal == principal
        )
        if conn.dialect.name == "postgresql":
            query = query.with_for_update()
        row = conn.execute(query).one_or_none()
        if row is None:
            # Another node may make it at the same moment: one insert wins, both then lock it.
            conn.execute(
                _insert(conn)(rate_buckets)
                .values(principal=principal, tokens=size, updated_at=now)
                .on_conflict_do_nothing(index_elements=[rate_buckets.c.principal])
            )
            row = conn.execute(query).one()
        return row

    # -- images and GPU seconds per day ------------------------------------------------------------

    def reserve_images(self, principal: str, n: int, *, limit: int, day: str) -> bool:
        """Adds ``n`` images to ``principal``'s count of ``day`` unless that would make it more than
        ``limit``: True when reserved, False (nothing changed) when refused. One statement, so
        concurrent reservations on any node never go over the limit together."""
        if n > limit:
            return False
        if n <= 0:
            return True
        table = daily_usage
        with transaction(self._db, write=True) as conn:
            insert = _insert(conn)(table).values(principal=principal, day=day, images=n, gpu_seconds=0.0)
            upsert = insert.on_conflict_do_update(
                index_elements=[table.c.principal, table.c.day],
                set_={"images": table.c.images + n},
                where=table.c.images + n <= limit,
            ).returning(table.c.images)
            return conn.execute(upsert).first() is not None

    def release_images(self, principal: str, n: int, *, day: str) -> None:
        """Gives back ``n`` images reserved on ``day`` (the submit they were for failed)."""
        if n <= 0:
            return
        images = daily_usage.c.images
        with transaction(self._db, write=True) as conn:
            conn.execute(
                sa.update(daily_usage)
                .where(daily_usage.c.principal == principal, daily_usage.c.day == day)
                .values(images=sa.case((images >= n, images - n), else_=0))
            )

    def usage(self, principal: str, day: str) -> DailyUsage:
        """What ``principal`` used on ``day``: images reserved and GPU seconds taken."""
        query = sa.select(daily_usage.c.images, daily_usage.c.gpu_seconds).where(
            daily_usage.c.principal == principal, daily_usage.c.day == day
        )
        with transaction(self._db, write=False, single=True) as conn:
            row = conn.execute(query).one_or_none()
        return DailyUsage() if row is None else DailyUsage(images=row.images, gpu_seconds=row.gpu_seconds)

    def gpu_seconds_used(self, principal: str, day: str) -> float:
        return self.usage(principal, day).gpu_seconds

    # -- retention -------------------------------------------------------------------------------

    def prune(self, now: datetime | None = None) -> int:
        """Deletes usage rows older than ``USAGE_KEEP`` (a month of days stays reportable) and rate
        buckets idle longer than ``BUCKET_IDLE`` (a bucket made again starts full, which an idle
        one of any rate this long would be). Returns the rows deleted; run by the retention task."""
        now = now or self.now()
        oldest_day = utc_day(now - USAGE_KEEP)
        with transaction(self._db, write=True) as conn:
            days = conn.execute(sa.delete(daily_usage).where(daily_usage.c.day < oldest_day)).rowcount
            idle = conn.execute(
                sa.delete(rate_buckets).where(rate_buckets.c.updated_at < now - BUCKET_IDLE)
            ).rowcount
        return int(days or 0) + int(idle or 0)


def _insert(conn: sa.Connection) -> Any:
    """The dialect's ``insert`` (both have ``on_conflict_do_*``)."""
    return pg_insert if conn.dialect.name == "postgresql" else sqlite_insert
