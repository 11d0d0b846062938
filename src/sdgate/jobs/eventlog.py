"""The job event log, for readers: one job's events after a cursor, a late joiner's snapshot, and
live subscriptions (the native API's ``GET /api/v1/jobs/{id}/events`` and ``/api/v1/events``).

It is the job outbox (table ``job_events``, see ``sdgate.jobs.outbox``): the store appends a row in
the transaction that changes the job, and an event's id is its row's ``seq``. One job's rows follow
its commit order in ``seq`` whichever process wrote them (each write locks the job's row before it
appends), so ``read(job_id, after=seq)``, a ``Last-Event-ID`` resume, misses nothing across
reconnects, restarts and processes. Across jobs ``seq`` is not commit order on PostgreSQL (appends
take no global lock), so nothing resumes a stream of every job by ``seq``: live subscribers (one job
or all) are fed by this process's ``OutboxFollower``, which reads behind the outbox's
transaction-id fence. How an event's data looks is the caller's (``render``):
the server runtime passes the native dialect's renderer in.

    log = EventLog(database, render, outbox)
    log.read(job_id, after=seq)         # [LoggedEvent], in commit order
    with log.subscribe(job_id=job_id) as live:
        event = await live.next(timeout=1.0)
    with log.subscribe(owner="alice") as mine:   # every job of one owner; any_owner=True: everyone's
        ...

A subscription to every job sees one owner's events unless it asks for every owner's (an admin's):
events go only to their owner's subscribers.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import sqlalchemy as sa

from sdgate.core.jobs import Job, JobEventKind
from sdgate.jobs.database import transaction
from sdgate.jobs.outbox import OutboxEvent, OutboxFollower, to_event
from sdgate.jobs.schema import job_events

TERMINAL = frozenset({JobEventKind.SUCCEEDED, JobEventKind.FAILED, JobEventKind.CANCELLED})
_MAX_BACKLOG = 512

Render = Callable[[JobEventKind, Job], dict[str, Any]]


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
    def __init__(self, database: sa.Engine, render: Render, outbox: OutboxFollower) -> None:
        self._db = database
        self._render = render
        self._lock = threading.Lock()
        self._subscribers: set[LogSubscription] = set()
        self._remove = outbox.add_listener(self._on_outbox)

    def close(self) -> None:
        self._remove()

    # -- live (the outbox follower's thread) -----------------------------------------------------

    def _on_outbox(self, outboxed: OutboxEvent) -> None:
        with self._lock:
            if not self._subscribers:
                return
        event = LoggedEvent(seq=outboxed.seq, job_id=outboxed.job.id, kind=outboxed.kind,
                            data=self._render(outboxed.kind, outboxed.job), owner=outboxed.job.owner)
        with self._lock:
            subscribers = [s for s in self._subscribers if s.wants(event)]
        for subscriber in subscribers:
            subscriber.deliver(event)

    # -- reading ---------------------------------------------------------------------------------

    def read(self, job_id: str, after: int = 0, *, limit: int = 1000) -> list[LoggedEvent]:
        if "\x00" in job_id:  # no job id holds NUL (PostgreSQL's text cannot even compare one)
            return []
        query = (
            sa.select(job_events)
            .where(job_events.c.job_id == job_id, job_events.c.seq > after)
            .order_by(job_events.c.seq)
            .limit(limit)
        )
        with transaction(self._db, write=False) as conn:
            rows = conn.execute(query).all()
        return [self._row_event(row) for row in rows]

    def snapshot(self, job_id: str) -> list[LoggedEvent]:
        """What a late joiner gets first: the latest state change, then the latest progress after it."""
        if "\x00" in job_id:
            return []
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
        return [self._row_event(row) for row in (state, progress) if row is not None]

    def subscribe(self, *, job_id: str | None = None, owner: str | None = None,
                  any_owner: bool = False) -> LogSubscription:
        """Live events of one job (the caller checked it may see it), or of every job of ``owner``
        (every owner's only with ``any_owner``: an admin's stream). Call from a running event loop;
        use as a ``with`` block."""
        subscription = LogSubscription(self, job_id, owner, any_owner, asyncio.get_running_loop())
        with self._lock:
            self._subscribers.add(subscription)
        return subscription

    def unsubscribe(self, subscription: LogSubscription) -> None:
        with self._lock:
            self._subscribers.discard(subscription)

    def _row_event(self, row: sa.Row[Any]) -> LoggedEvent:
        outboxed = to_event(row)
        if outboxed is None:  # written before the outbox: rendered when it was logged
            return LoggedEvent(seq=row.seq, job_id=row.job_id, kind=JobEventKind(row.kind), data=row.data)
        return LoggedEvent(seq=row.seq, job_id=row.job_id, kind=outboxed.kind,
                           data=self._render(outboxed.kind, outboxed.job), owner=outboxed.job.owner)


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
