"""The job outbox: every change of a job, written in the transaction that makes it, readable by
every process that shares the database.

    write_event(conn, kind, job, origin)       # the store, inside its write transaction
    follower = OutboxFollower(engine, origin=store.origin, bus=events)
    follower.add_listener(fn)                  # fn(OutboxEvent) for every row, in commit order
    follower.start(); follower.wake(); follower.stop()

A row is ``(seq, job_id, kind, job snapshot, origin)`` in the ``job_events`` table. The store still
publishes its own changes on its process's ``JobEvents`` at once; the follower reads the table and
publishes the rows other processes wrote (``origin`` differs) on the same bus, so a worker in one
process wakes the waiters, event streams and webhooks of another.

Reading "every row after my cursor" must never skip a row that commits late:

- SQLite: write transactions are exclusive, so ``seq`` follows commit order; the cursor is a ``seq``.
- PostgreSQL: appends run concurrently (no lock), so a row with a lower ``seq`` may commit after one
  with a higher. Each row records its transaction id (``tx``, migration 0005) and a follower reads
  ``(tx, seq) > cursor AND tx < pg_snapshot_xmin(pg_current_snapshot()) ORDER BY tx, seq``: every
  transaction below the snapshot's ``xmin`` has ended, so no row can appear behind the cursor later
  (``read_after``). A row of a transaction that ended while an older one still runs waits for that
  one; the read says so (``Batch.held``) and the follower reads again shortly rather than at its
  next poll. One job's rows keep commit order in ``seq`` too (each write locks the job's row first),
  which is what an SSE ``Last-Event-ID`` of one job resumes by (``eventlog.py``).

When does the follower read? At once after ``wake`` (the store calls it after each of its own
commits), every ``poll_s`` regardless, and on PostgreSQL also at once when any process commits a row:
each append sends ``NOTIFY sdgate_jobs, '<origin> <kind>'`` in its INSERT, and the follower keeps a
``notify.NotifyListener`` LISTENing (the poll remains the fallback while that connection is down).

A worker node (``start(queued_only=True)`` on PostgreSQL) reads no row at all: its workers only
need to wake for submissions, so its LISTEN on the submissions' channel signals them
(``JobEvents.signal``) and they read what they claim from the store.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Collection
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from sdgate.core.jobs import Job, JobEventKind
from sdgate.jobs.database import transaction
from sdgate.jobs.events import JobEvents, Listeners
from sdgate.jobs.notify import (
    CHANNELS,
    QUEUE_CHANNEL,
    NotifyListener,
    notice,
    notifying,
    parse_payload,
    pg_notify_call,
)
from sdgate.jobs.schema import job_events

logger = logging.getLogger(__name__)

DEFAULT_POLL_S = 0.2
_BATCH = 500
# PostgreSQL: how soon to read again while committed rows wait behind an older open transaction
# (one that writes no outbox row sends no NOTIFY when it ends); doubles up to ``poll_s``.
HELD_RETRY_S = 0.002

Cursor = tuple[int, int]
"""Where a reader stands: ``(tx, seq)`` of the last row it read; ``tx`` is always 0 on SQLite."""


@dataclass(frozen=True)
class OutboxEvent:
    seq: int
    kind: JobEventKind
    job: Job
    origin: str | None


OutboxListener = Callable[[OutboxEvent], None]


def _append_statement(postgresql: bool) -> sa.Executable:
    """The INSERT of one outbox row, built once (building a statement and its cache key costs more
    than running it): named parameters, ``RETURNING seq``; on PostgreSQL with its NOTIFY."""
    columns = ("job_id", "kind", "data", "job", "origin", "created_at")
    insert = sa.insert(job_events).values(
        {name: sa.bindparam(name, type_=job_events.c[name].type) for name in columns}
    )
    if not postgresql:
        return insert.returning(job_events.c.seq)
    return notifying(insert, job_events.c.seq)


_APPEND = {False: _append_statement(False), True: _append_statement(True)}


def write_event(conn: sa.Connection, kind: JobEventKind, job: Job, origin: str) -> int:
    """Appends one row inside the caller's transaction (on PostgreSQL with its NOTIFY, in the same
    statement); returns its ``seq``. No lock: readers read behind the ``tx`` fence."""
    params = {
        "job_id": job.id,
        "kind": kind.value,
        "data": {},
        "job": job.model_dump(mode="json"),
        "origin": origin,
        "created_at": datetime.now(UTC),
    }
    postgresql = conn.dialect.name == "postgresql"
    if postgresql:
        params.update(notice(origin, kind.value))
    return int(conn.execute(_APPEND[postgresql], params).scalar_one())


_NOTIFY = sa.select(pg_notify_call())


def write_events(conn: sa.Connection, kind: JobEventKind, changed: list[Job], origin: str) -> None:
    """Appends one row of ``kind`` per job of ``changed`` inside the caller's transaction, in one
    multi-row INSERT (and, on PostgreSQL, one NOTIFY for them all): a claim of a group of jobs."""
    append_events(conn, [(kind, job) for job in changed], origin)


_APPEND_MANY = sa.insert(job_events)


def append_events(conn: sa.Connection, changes: list[tuple[JobEventKind, Job]], origin: str) -> None:
    """Appends one row per ``(kind, job)`` of ``changes``, in their order, inside the caller's
    transaction: one multi-row INSERT and, on PostgreSQL, one NOTIFY per kind among them (a batch
    of submissions or outcomes; a follower wakes by the kinds it hears of)."""
    if not changes:
        return
    now = datetime.now(UTC)
    rows = [{"job_id": job.id, "kind": kind.value, "data": {}, "job": job.model_dump(mode="json"),
             "origin": origin, "created_at": now} for kind, job in changes]
    conn.execute(_APPEND_MANY, rows)
    if conn.dialect.name == "postgresql":
        for kind in dict.fromkeys(kind for kind, _ in changes):
            conn.execute(_NOTIFY, notice(origin, kind.value))


@dataclass(frozen=True)
class Batch:
    rows: list[sa.Row[Any]]
    cursor: Cursor  # after the last of ``rows`` (the given cursor when none)
    held: bool = False  # PostgreSQL: committed rows wait behind the fence (an older transaction runs)


_PG_FENCE = "WITH fence AS (SELECT pg_snapshot_xmin(pg_current_snapshot()) AS xmin)"
_PG_READ = sa.text(f"""{_PG_FENCE}
SELECT EXISTS (SELECT 1 FROM job_events h WHERE h.tx >= fence.xmin) AS held, e.*
FROM fence LEFT JOIN LATERAL (
    SELECT j.seq, j.job_id, j.kind, j.data, j.created_at, j.origin,
           CASE WHEN CAST(:kinds AS text[]) IS NULL OR j.kind = ANY(CAST(:kinds AS text[]))
                THEN j.job END AS job,
           CAST(CAST(j.tx AS text) AS bigint) AS tx
    FROM job_events j
    WHERE (j.tx, j.seq) > (CAST(CAST(:tx AS text) AS xid8), :seq) AND j.tx < fence.xmin
      AND (CAST(:skip AS text) IS NULL OR j.origin IS DISTINCT FROM CAST(:skip AS text))
    ORDER BY j.tx, j.seq
    LIMIT :limit
) e ON true""")
_PG_START = sa.text(f"""{_PG_FENCE}
SELECT CAST(CAST(fence.xmin AS text) AS bigint) AS xmin, j.seq
FROM fence LEFT JOIN job_events j ON j.tx >= fence.xmin""")


def read_after(conn: sa.Connection, cursor: Cursor, *, limit: int = _BATCH,
               skip_origin: str | None = None, kinds: Collection[str] | None = None) -> Batch:
    """The rows after ``cursor`` in an order no late commit can break (see the module's docstring):
    ``seq`` on SQLite, ``(tx, seq)`` below the snapshot's ``xmin`` on PostgreSQL. ``skip_origin``:
    leaves out that process's rows (the cursor passes them all the same). ``kinds``: only rows of
    these kinds carry their job snapshot (the others' ``job`` is None: not even decoded)."""
    if conn.dialect.name != "postgresql":
        job = job_events.c.job
        if kinds is not None:
            job = sa.case((job_events.c.kind.in_(list(kinds)), job_events.c.job), else_=sa.null())
        columns = [c for c in job_events.c if c.name != "job"]
        query = sa.select(*columns, job.label("job")).where(job_events.c.seq > cursor[1])
        if skip_origin is not None:
            query = query.where(job_events.c.origin.is_distinct_from(skip_origin))
        rows = conn.execute(query.order_by(job_events.c.seq).limit(limit)).all()
        return Batch(list(rows), (0, rows[-1].seq) if rows else cursor)
    params = {"tx": cursor[0], "seq": cursor[1], "limit": limit, "skip": skip_origin,
              "kinds": None if kinds is None else list(kinds)}
    result = conn.execute(_PG_READ, params).all()
    rows = [row for row in result if row.seq is not None]
    return Batch(rows, (rows[-1].tx, rows[-1].seq) if rows else cursor, held=bool(result[0].held))


def start_cursor(conn: sa.Connection) -> tuple[Cursor, frozenset[int]]:
    """A reader that starts now: its cursor, and the ``seq`` of rows already committed beyond it
    (PostgreSQL: behind the fence), which it is to skip. ``read_after`` from there yields exactly
    the rows committed after this call."""
    if conn.dialect.name != "postgresql":
        newest = conn.execute(sa.select(sa.func.coalesce(sa.func.max(job_events.c.seq), 0))).scalar_one()
        return (0, int(newest)), frozenset()
    rows = conn.execute(_PG_START).all()
    return (int(rows[0].xmin), 0), frozenset(row.seq for row in rows if row.seq is not None)


def to_event(row: sa.Row[Any]) -> OutboxEvent | None:
    """The event a row holds; None for a row written before the outbox (no job snapshot)."""
    if row.job is None:
        return None
    return OutboxEvent(seq=row.seq, kind=JobEventKind(row.kind), job=Job.model_validate(row.job),
                       origin=row.origin)


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
        self._cursor: Cursor = (0, 0)
        self._skip: frozenset[int] = frozenset()  # committed before start, beyond the cursor
        self._held = False
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

    def start(self, *, queued_only: bool = False) -> None:
        """Follows from the newest row on: what happened before is read from the table itself.

        ``queued_only`` (a worker node: its workers only wake for submissions, and read the jobs
        they claim from the store): on PostgreSQL no row is read at all; a LISTEN on the
        submissions' channel ``signal``s each submission of another process to the bus
        (``JobEvents.add_signal``, what a worker waits on), and every (re)connection signals one
        too (what was submitted while no LISTEN was in place). A worker's own poll of the queue
        stays the fallback. Elsewhere (SQLite, which has no NOTIFY) the rows are read as usual."""
        if self._thread is not None or self.notifications is not None:
            return
        if queued_only and self._engine.dialect.name == "postgresql":
            self.notifications = NotifyListener(self._engine, self._submitted, channels=(QUEUE_CHANNEL,))
            self.notifications.start()
            return
        with transaction(self._engine, write=False) as conn:
            self._cursor, self._skip = start_cursor(conn)
        self._stopping.clear()
        self._thread = threading.Thread(target=self._loop, name="sdgate-outbox", daemon=True)
        self._thread.start()
        if self._engine.dialect.name == "postgresql":
            channels = (QUEUE_CHANNEL,) if queued_only else CHANNELS
            self.notifications = NotifyListener(self._engine, self.notified, channels=channels)
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
        """A change was just committed in this process: read now. On PostgreSQL its NOTIFY wakes
        the follower anyway (``notified``), so while the LISTEN is in place this waits for that."""
        notifications = self.notifications
        if notifications is None or not notifications.listening.is_set():
            self._wake.set()

    def notified(self, payloads: frozenset[str] | None) -> None:
        """NOTIFY: rows committed, each payload ``'<origin> <kind>'`` (None: anything may have).
        Read at once when a listener wants every row, or for another process's row of a kind this
        process's bus has a listener for; else with the next read (a worker node does not wake for
        other workers' progress)."""
        if payloads is None or self._listener_count:
            self._wake.set()
            return
        for payload in payloads:
            origin, kind = parse_payload(payload)
            if origin != self._origin and (kind is None or self._bus_wants(kind)):
                self._wake.set()
                return

    def _submitted(self, payloads: frozenset[str] | None) -> None:
        """``start(queued_only=True)``: a submission's NOTIFY (another process's, or any after a
        reconnection) wakes this process's workers, no row read."""
        if self._bus is None:
            return
        if payloads is None or any(parse_payload(p)[0] != self._origin for p in payloads):
            self._bus.signal(JobEventKind.QUEUED)

    def _bus_wants(self, kind: str) -> bool:
        try:
            return self._bus is not None and self._bus.wants(JobEventKind(kind))
        except ValueError:  # a kind this version does not know
            return True

    def _wanted_kinds(self) -> list[str] | None:
        """The kinds whose rows are decoded: all while an outbox listener wants every row, else
        those this process's bus has listeners for."""
        if self._listener_count:
            return None
        wanted = [kind.value for kind in JobEventKind if self._bus_wants(kind.value)]
        return None if len(wanted) == len(JobEventKind) else wanted

    def poll_once(self) -> int:
        """Reads and dispatches what is new; the number of rows read."""
        # This process's rows were published by the store that wrote them: unless a listener
        # wants every row, they need not even be fetched.
        skip_origin = None if self._listener_count else self._origin
        with transaction(self._engine, write=False, single=True) as conn:
            batch = read_after(conn, self._cursor, skip_origin=skip_origin, kinds=self._wanted_kinds())
        self._held = batch.held
        for row in batch.rows:
            self._cursor = (getattr(row, "tx", 0), row.seq)
            if row.seq in self._skip or (row.origin == self._origin and not self._listener_count):
                continue
            event = to_event(row)
            if event is not None:
                self._dispatch(event)
        if self._skip and not batch.held and len(batch.rows) < _BATCH:
            self._skip = frozenset()  # every row committed before start is behind the cursor now
        return len(batch.rows)

    def _dispatch(self, event: OutboxEvent) -> None:
        if self._bus is not None and event.origin != self._origin:
            self._bus.publish(event.kind, event.job)
        self._listeners.call(event.job.id, event)

    def _loop(self) -> None:
        held_wait = HELD_RETRY_S
        failing = False  # one warning per outage, not one per poll while the database is away
        while not self._stopping.is_set():
            self._wake.clear()
            try:
                read = self.poll_once()
                if failing:
                    logger.info("reading the job outbox works again")
                    failing = False
                if read >= _BATCH:
                    continue
            except Exception as exc:  # the database is busy or the disk refuses: try again next poll
                if not failing:
                    logger.warning("reading the job outbox failed (%s); retrying every %.1f s",
                                   type(exc).__name__, self._poll_s, exc_info=True)
                else:
                    logger.debug("reading the job outbox still fails: %s", exc)
                failing = True
                self._held = False
            if self._held:  # rows wait for an older transaction to end: look again soon
                self._wake.wait(held_wait)
                held_wait = min(held_wait * 2, self._poll_s)
                continue
            held_wait = HELD_RETRY_S
            self._wake.wait(self._poll_s)
