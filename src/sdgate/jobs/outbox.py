"""The job outbox: every change of a job, written in the transaction that makes it, readable by
every process that shares the database.

    write_event(conn, kind, job, origin)       # the store, inside its write transaction
    follower = OutboxFollower(engine, origin=store.origin, bus=events)
    follower.add_listener(fn)                  # fn(OutboxEvent) for every row, in seq order
    follower.start(); follower.wake(); follower.stop()

A row is ``(seq, job_id, kind, job snapshot, origin)`` in the ``job_events`` table. The store still
publishes its own changes on its process's ``JobEvents`` at once; the follower reads the table and
publishes the rows other processes wrote (``origin`` differs) on the same bus, so a worker in one
process wakes the waiters, event streams and webhooks of another. Appends take turns until commit
(``database.serialize``), so rows commit in ``seq`` order and "every row after the cursor" misses
nothing, on both databases.

When does the follower read? At once after ``wake`` (the store calls it after each of its own
commits), every ``poll_s`` regardless, and on PostgreSQL also at once when any process commits a row:
each append sends ``NOTIFY sdgate_jobs, '<seq>'`` in its INSERT, and the follower keeps a
``notify.NotifyListener`` LISTENing (the poll remains the fallback while that connection is down).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from sdgate.core.jobs import Job, JobEventKind
from sdgate.jobs.database import lock_key, serialize, transaction
from sdgate.jobs.events import JobEvents, Listeners
from sdgate.jobs.notify import NotifyListener, locked_then, notifying
from sdgate.jobs.schema import job_events

logger = logging.getLogger(__name__)

DEFAULT_POLL_S = 0.2
_BATCH = 500


@dataclass(frozen=True)
class OutboxEvent:
    seq: int
    kind: JobEventKind
    job: Job
    origin: str | None


OutboxListener = Callable[[OutboxEvent], None]


def write_event(conn: sa.Connection, kind: JobEventKind, job: Job, origin: str, *,
                serialize_as: str | None = None) -> int:
    """Appends one row inside the caller's transaction (on PostgreSQL with its NOTIFY); returns
    its ``seq``. ``serialize_as``: first ``database.serialize(conn, serialize_as)``, in the same
    statement on PostgreSQL (one round trip: lock, insert, notify)."""
    values = {
        "job_id": job.id,
        "kind": kind.value,
        "data": {},
        "job": job.model_dump(mode="json"),
        "origin": origin,
        "created_at": datetime.now(UTC),
    }
    if conn.dialect.name != "postgresql":
        if serialize_as is not None:
            serialize(conn, serialize_as)
        inserted = conn.execute(sa.insert(job_events).values(values).returning(job_events.c.seq))
        return int(inserted.scalar_one())
    if serialize_as is None:
        insert = sa.insert(job_events).values(values)
    else:
        insert = locked_then(lock_key(serialize_as), job_events, values)
    return int(conn.execute(notifying(insert, job_events.c.seq)).scalar_one())


def to_event(row: sa.Row[Any]) -> OutboxEvent | None:
    """The event a row holds; None for a row written before the outbox (no job snapshot)."""
    if row.job is None:
        return None
    return OutboxEvent(seq=row.seq, kind=JobEventKind(row.kind), job=Job.model_validate(row.job),
                       origin=row.origin)


def latest_seq(engine: sa.Engine) -> int:
    with transaction(engine, write=False) as conn:
        return int(conn.execute(sa.select(sa.func.coalesce(sa.func.max(job_events.c.seq), 0))).scalar_one())


class OutboxFollower:
    """One thread per process that reads new outbox rows every ``poll_s`` (or at once after
    ``wake``, or a notification on PostgreSQL), publishes other processes' rows on ``bus`` and
    hands every row to its listeners."""

    def __init__(self, engine: sa.Engine, *, origin: str, bus: JobEvents | None = None,
                 poll_s: float = DEFAULT_POLL_S) -> None:
        self._engine = engine
        self._origin = origin
        self._bus = bus
        self._poll_s = poll_s
        self._cursor = 0
        self._listeners: Listeners[[OutboxEvent]] = Listeners("outbox listener")
        self._listener_count = 0  # none: this process's own rows need not even be parsed
        self._count_lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self.notifications: NotifyListener | None = None  # PostgreSQL: while started

    def add_listener(self, listener: OutboxListener) -> Callable[[], None]:
        """``listener(event)`` for every row, on the follower's thread; returns its remover."""
        remove = self._listeners.add(listener)
        with self._count_lock:
            self._listener_count += 1
        removed = threading.Event()

        def remover() -> None:
            remove()
            with self._count_lock:
                if not removed.is_set():
                    removed.set()
                    self._listener_count -= 1

        return remover

    def start(self) -> None:
        """Follows from the newest row on: what happened before is read from the table itself."""
        if self._thread is not None:
            return
        self._cursor = latest_seq(self._engine)
        self._stopping.clear()
        self._thread = threading.Thread(target=self._loop, name="sdgate-outbox", daemon=True)
        self._thread.start()
        if self._engine.dialect.name == "postgresql":
            self.notifications = NotifyListener(self._engine, self.wake)
            self.notifications.start()

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()
        if self.notifications is not None:
            self.notifications.stop()
            self.notifications = None
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None

    def wake(self) -> None:
        """Read now (a change was just committed in this process)."""
        self._wake.set()

    def poll_once(self) -> int:
        """Reads and dispatches what is new; the number of rows read."""
        with transaction(self._engine, write=False) as conn:
            rows = conn.execute(
                sa.select(job_events).where(job_events.c.seq > self._cursor)
                .order_by(job_events.c.seq).limit(_BATCH)
            ).all()
        for row in rows:
            self._cursor = row.seq
            if row.origin == self._origin and not self._listener_count:
                continue  # already published by the store that wrote it, and nobody else listens
            event = to_event(row)
            if event is not None:
                self._dispatch(event)
        return len(rows)

    def _dispatch(self, event: OutboxEvent) -> None:
        if self._bus is not None and event.origin != self._origin:
            self._bus.publish(event.kind, event.job)
        self._listeners.call(event.job.id, event)

    def _loop(self) -> None:
        while not self._stopping.is_set():
            self._wake.clear()
            try:
                if self.poll_once() >= _BATCH:
                    continue
            except Exception:  # the database is busy or the disk refuses: try again next poll
                logger.warning("reading the job outbox failed", exc_info=True)
            self._wake.wait(self._poll_s)
