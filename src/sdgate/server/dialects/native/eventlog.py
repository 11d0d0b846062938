"""The per-job event log behind ``GET /api/v1/jobs/{id}/events`` and ``/api/v1/events``.

Kept in the database (table ``job_events``), not in memory: an event's id is its row's ``seq``, so
``Last-Event-ID`` resumes across reconnects and across a restart of the server, and rows are
readable from any process. ``EventLog.on_event`` listens on ``JobEvents`` (on the publishing thread,
after the store committed), writes the row, then wakes this process's streams.

Listeners run on whichever thread changed the job, so two changes of one job can reach the log out
of order (a worker's ``started`` before the submitting request's ``queued``). ``order_key`` ranks
each snapshot; one that ranks at or below what the log already holds for that job is stale and
dropped, so a stream never goes backwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from types import TracebackType
from typing import Any

import sqlalchemy as sa

from sdgate.core.jobs import Job, JobEventKind
from sdgate.jobs.database import transaction
from sdgate.jobs.schema import job_events

logger = logging.getLogger("sdgate.native")

TERMINAL = frozenset({JobEventKind.SUCCEEDED, JobEventKind.FAILED, JobEventKind.CANCELLED})
_REMEMBERED_JOBS = 10_000
_MAX_BACKLOG = 512

OrderKey = tuple[int, int, float]


def order_key(kind: JobEventKind, job: Job) -> OrderKey:
    """(attempt epoch, phase, progress). A job re-queued after a crash starts a new epoch, so its
    second ``queued`` outranks the first run's events; a stale first ``queued`` does not."""
    if kind is JobEventKind.QUEUED:
        return (job.attempts + 1, 0, 0.0)
    if kind is JobEventKind.STARTED:
        return (job.attempts, 1, 0.0)
    if kind is JobEventKind.PROGRESS:
        return (job.attempts, 1, job.progress.fraction if job.progress else 0.0)
    return (job.attempts if job.started_at is not None else job.attempts + 1, 2, 0.0)


@dataclass(frozen=True)
class LoggedEvent:
    seq: int
    job_id: str
    kind: JobEventKind
    data: dict[str, Any]
    owner: str | None = None

    @property
    def terminal(self) -> bool:
        return self.kind in TERMINAL


class EventLog:
    def __init__(self, database: sa.Engine, render: Callable[[JobEventKind, Job], dict[str, Any]]) -> None:
        self._db = database
        self._render = render
        self._lock = threading.Lock()
        self._last: OrderedDict[str, OrderKey] = OrderedDict()
        self._subscribers: set[LogSubscription] = set()

    # -- writing (listener) ----------------------------------------------------------------------

    def on_event(self, kind: JobEventKind, job: Job) -> None:
        try:
            event = self._append(kind, job)
        except Exception:  # the log is for streams; a failed write must not fail the job
            logger.exception("job %s: could not log its %s event", job.id, kind.value)
            return
        if event is None:
            return
        with self._lock:
            subscribers = [s for s in self._subscribers if s.wants(event)]
        for subscriber in subscribers:
            subscriber.deliver(event)

    def _append(self, kind: JobEventKind, job: Job) -> LoggedEvent | None:
        key = order_key(kind, job)
        # Held across the write, so rows of one job are inserted in rank order.
        with self._lock:
            last = self._last.get(job.id)
            if last is not None and key <= last:
                return None
            data = self._render(kind, job)
            with transaction(self._db, write=True) as conn:
                seq = conn.execute(
                    sa.insert(job_events)
                    .values(job_id=job.id, kind=kind.value, data=data, created_at=datetime.now(UTC))
                    .returning(job_events.c.seq)
                ).scalar_one()
            self._last[job.id] = key
            self._last.move_to_end(job.id)
            while len(self._last) > _REMEMBERED_JOBS:
                self._last.popitem(last=False)
        return LoggedEvent(seq=seq, job_id=job.id, kind=kind, data=data, owner=job.owner)

    # -- reading ---------------------------------------------------------------------------------

    def read(self, job_id: str, after: int = 0, *, limit: int = 1000) -> list[LoggedEvent]:
        query = (
            sa.select(job_events)
            .where(job_events.c.job_id == job_id, job_events.c.seq > after)
            .order_by(job_events.c.seq)
            .limit(limit)
        )
        with transaction(self._db, write=False) as conn:
            return [_row_event(row) for row in conn.execute(query)]

    def snapshot(self, job_id: str) -> list[LoggedEvent]:
        """What a late joiner gets first: the latest state change, then the latest progress after it."""
        with transaction(self._db, write=False) as conn:
            state = conn.execute(
                sa.select(job_events)
                .where(job_events.c.job_id == job_id, job_events.c.kind != JobEventKind.PROGRESS.value)
                .order_by(job_events.c.seq.desc())
                .limit(1)
            ).one_or_none()
            if state is None:
                return []
            progress = conn.execute(
                sa.select(job_events)
                .where(
                    job_events.c.job_id == job_id,
                    job_events.c.kind == JobEventKind.PROGRESS.value,
                    job_events.c.seq > state.seq,
                )
                .order_by(job_events.c.seq.desc())
                .limit(1)
            ).one_or_none()
        return [_row_event(row) for row in (state, progress) if row is not None]

    def subscribe(self, *, job_id: str | None = None, owner: str | None = None,
                  any_owner: bool = True) -> LogSubscription:
        """Live events of one job, or of every job (of ``owner`` unless ``any_owner``). Call from a
        running event loop; use as a ``with`` block."""
        subscription = LogSubscription(self, job_id, owner, any_owner, asyncio.get_running_loop())
        with self._lock:
            self._subscribers.add(subscription)
        return subscription

    def unsubscribe(self, subscription: LogSubscription) -> None:
        with self._lock:
            self._subscribers.discard(subscription)


def _row_event(row: sa.Row[Any]) -> LoggedEvent:
    return LoggedEvent(seq=row.seq, job_id=row.job_id, kind=JobEventKind(row.kind), data=row.data)


class LogSubscription:
    def __init__(self, log: EventLog, job_id: str | None, owner: str | None, any_owner: bool,
                 loop: asyncio.AbstractEventLoop) -> None:
        self._log = log
        self._job_id = job_id
        self._owner = owner
        self._any_owner = any_owner
        self._loop = loop
        self._queue: asyncio.Queue[LoggedEvent] = asyncio.Queue()

    def wants(self, event: LoggedEvent) -> bool:
        if self._job_id is not None:
            return event.job_id == self._job_id
        return self._any_owner or event.owner == self._owner

    def deliver(self, event: LoggedEvent) -> None:
        try:
            self._loop.call_soon_threadsafe(self._put, event)
        except RuntimeError:  # the loop is closed: its reader is gone
            self._log.unsubscribe(self)

    def _put(self, event: LoggedEvent) -> None:
        # A reader this far behind loses progress events, never state changes.
        if event.kind is JobEventKind.PROGRESS and self._queue.qsize() >= _MAX_BACKLOG:
            return
        self._queue.put_nowait(event)

    async def next(self, timeout: float) -> LoggedEvent | None:
        """The next live event, or None after ``timeout`` seconds."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                return await self._queue.get()
        return None

    def __enter__(self) -> LogSubscription:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._log.unsubscribe(self)
