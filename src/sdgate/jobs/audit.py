"""The audit log: one record per API call (who, what, the outcome), in the job database.

    audit = AuditLog(database)
    audit.record(AuditRecord(at=..., method="POST", route="/api/v1/jobs", status=201, ...))
    page = audit.query(AuditFilter(keys=("key_123",), since=...), limit=50)
    page = audit.query(flt, limit=50, cursor=page.next_cursor)   # the next (older) page
    audit.close()                                                  # writes what is queued

Writing never makes a call wait on the database: ``record`` puts the record on a bounded queue and
returns; one background thread (started by the first record) inserts whatever has queued, up to
``batch`` rows per transaction. When the queue is full (the database is down, or far slower than the
calls) a new record is dropped, counted in ``dropped`` and logged once per overflow, rather than
blocking: an audit insert must never stall the API it records (a PostgreSQL restart would otherwise
stop every call of every dialect). While the database is unreachable the writer retries its batch
for about ten seconds, then counts it lost too; a batch the database refuses for its contents is
retried row by row, so one bad row loses itself only. ``close`` flushes what is queued (within a
timeout) and stops the thread.

Who a record is about: ``key_id`` (the API key's id, never the key) and ``principal`` (what its
jobs store as their owner: the key id, or a Basic user's name). ``AuditFilter.keys`` matches either.
Records come back newest first by ``seq`` (the order they were written), with a cursor.

Retention deletes records older than ``audit_retention_s`` (``delete_audit_before``, called by
``jobs/retention.py``). SQLite and PostgreSQL alike; SQLAlchemy Core only.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import re
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, fields
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa

from sdgate.core.errors import StorageFull, StorageUnavailable
from sdgate.jobs.database import transaction
from sdgate.jobs.keys import PREFIX_LENGTH, looks_like_key
from sdgate.jobs.schema import api_keys, audit_log

logger = logging.getLogger("sdgate.audit")

MAX_QUEUE = 10_000
BATCH = 500
MAX_PAGE = 1000
_RETRY_S = (0.2, 0.5, 1.0, 2.0, 5.0)  # pauses between tries while the database is unreachable
_DELETE_BATCH = 5000


@dataclass(frozen=True)
class AuditRecord:
    """One call. ``at``: when it arrived; ``route``: the route's template (never the raw path, which
    may hold a token); ``status``: the HTTP status (101 for an accepted WebSocket); the job fields
    are the call's first job (``images`` and ``gpu_seconds`` summed over its jobs); ``filtered``: the
    content filter refused the request or one of its images (``None``: unknown); ``prompt`` only
    where the operator turned prompt auditing on. ``seq`` is set on records read back."""

    at: datetime
    method: str
    route: str
    status: int
    key_id: str | None = None
    principal: str | None = None
    dialect: str | None = None
    job_id: str | None = None
    images: int | None = None
    gpu_seconds: float | None = None
    filtered: bool | None = None
    prompt: str | None = None
    request_id: str | None = None
    seq: int | None = None

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["at"] = self.at.isoformat()
        return out


@dataclass(frozen=True)
class AuditFilter:
    """Which records a query wants; every field set must match. ``keys``: records whose ``key_id``
    or ``principal`` is one of these (see ``key_matches``); ``since`` inclusive, ``until``
    exclusive."""

    keys: tuple[str, ...] = ()
    since: datetime | None = None
    until: datetime | None = None
    route: str | None = None
    status: int | None = None


@dataclass(frozen=True)
class AuditPage:
    records: list[AuditRecord]
    next_cursor: int | None  # pass back as ``cursor`` for the older records; None: no more


# -- reading --------------------------------------------------------------------------------------


def query_audit(
    database: sa.Engine, flt: AuditFilter, *, limit: int = 100, cursor: int | None = None
) -> AuditPage:
    """Records matching ``flt``, newest first, at most ``limit`` (1 to ``MAX_PAGE``), older than
    ``cursor`` (a ``next_cursor``) when given."""
    limit = max(1, min(int(limit), MAX_PAGE))
    stmt = sa.select(audit_log).where(*_conditions(flt)).order_by(audit_log.c.seq.desc()).limit(limit + 1)
    if cursor is not None:
        stmt = stmt.where(audit_log.c.seq < cursor)
    with transaction(database, write=False, single=True) as conn:
        rows = conn.execute(stmt).mappings().all()
    records = [_record(row) for row in rows[:limit]]
    more = len(rows) > limit
    return AuditPage(records=records, next_cursor=records[-1].seq if more and records else None)


def _conditions(flt: AuditFilter) -> list[sa.ColumnElement[bool]]:
    where: list[sa.ColumnElement[bool]] = []
    if flt.keys:
        keys = [_clean(k) for k in flt.keys]
        where.append(sa.or_(audit_log.c.key_id.in_(keys), audit_log.c.principal.in_(keys)))
    if flt.since is not None:
        where.append(audit_log.c.at >= flt.since)
    if flt.until is not None:
        where.append(audit_log.c.at < flt.until)
    if flt.route is not None:
        where.append(audit_log.c.route == _clean(flt.route))
    if flt.status is not None:
        where.append(audit_log.c.status == flt.status)
    return where


def _record(row: Any) -> AuditRecord:
    return AuditRecord(**{f.name: row[f.name] for f in fields(AuditRecord)})


def key_matches(database: sa.Engine, text: str) -> tuple[str, ...]:
    """What ``--key TEXT`` means: ``TEXT`` itself (a key id, or a Basic user's name) and the id of
    every API key named ``TEXT`` (revoked ones too: their calls stay in the log) or whose visible
    prefix is ``TEXT``. A whole key pasted in is looked up by its prefix, and not matched itself."""
    text = _clean(text)
    prefix = text[:PREFIX_LENGTH] if looks_like_key(text) else text
    with transaction(database, write=False, single=True) as conn:
        ids = conn.execute(
            sa.select(api_keys.c.id).where(sa.or_(api_keys.c.name == text, api_keys.c.prefix == prefix))
        ).scalars().all()
    own = [] if prefix != text else [text]
    return tuple(dict.fromkeys([*own, *ids]))


DURATION_PATTERN = r"^\d{1,9}(\.\d{1,6})?[smhdw]$"
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)\s*(s|m|h|d|w)$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_EARLIEST = datetime.min.replace(tzinfo=UTC)


def parse_when(text: str, *, now: datetime | None = None) -> datetime:
    """``--since``/``--until``: a duration back from now (``90s``, ``15m``, ``1h``, ``7d``, ``2w``;
    one longer than the calendar: its start), a date (``2026-12-01``: its midnight, UTC) or an ISO
    8601 date-time (UTC when it names no zone). ``ValueError`` for anything else."""
    value = text.strip()
    found = _DURATION.match(value.lower())
    if found:
        return ago(float(found.group(1)) * _UNITS[found.group(2)], now=now)
    try:
        when = datetime.fromisoformat(value.replace("Z", "+00:00") if value.endswith("Z") else value)
    except ValueError:
        raise ValueError(
            f"{text[:64]!r}: a duration (1h, 7d), a date (2026-12-01) or an ISO 8601 date-time"
        ) from None
    return as_utc(when)


def ago(seconds: float, *, now: datetime | None = None) -> datetime:
    """``seconds`` before ``now``; the calendar's start when that is before it."""
    now = now or datetime.now(UTC)
    if seconds >= (now - _EARLIEST).total_seconds():
        return _EARLIEST
    return now - timedelta(seconds=seconds)


def as_utc(when: datetime) -> datetime:
    """``when`` in UTC (naive: taken as UTC); at the calendar's ends, clamped to them."""
    if when.tzinfo is None:
        return when.replace(tzinfo=UTC)
    try:
        return when.astimezone(UTC)
    except OverflowError:  # year 1 or 9999 shifted past the calendar's end
        return _EARLIEST if when.year == 1 else datetime.max.replace(tzinfo=UTC)


# -- retention ------------------------------------------------------------------------------------


def delete_audit_before(database: sa.Engine, cutoff: datetime) -> int:
    """Deletes records older than ``cutoff``, a batch per transaction (a long delete would hold
    SQLite's write lock against the job store); the number deleted."""
    deleted = 0
    while True:
        with transaction(database, write=True) as conn:
            old = sa.select(audit_log.c.seq).where(audit_log.c.at < cutoff).limit(_DELETE_BATCH)
            seqs = conn.execute(old).scalars().all()
            if seqs:
                conn.execute(sa.delete(audit_log).where(audit_log.c.seq.in_(seqs)))
        deleted += len(seqs)
        if len(seqs) < _DELETE_BATCH:
            return deleted


# -- writing --------------------------------------------------------------------------------------


_STOP = object()
_LENGTHS = {
    c.name: c.type.length for c in audit_log.columns if isinstance(c.type, sa.String) and c.type.length
}


def _row(record: AuditRecord) -> dict[str, Any]:
    """The record as a row the column types take: texts cut to their column's length and without
    NUL (PostgreSQL refuses it), so no caller's value can make a batch fail."""
    row = asdict(record)
    row.pop("seq")
    for name, value in row.items():
        if isinstance(value, str):
            value = _clean(value)
            limit = _LENGTHS.get(name)
            row[name] = value[:limit] if limit else value
    return row


def _clean(text: str) -> str:
    """NUL as written (PostgreSQL takes no NUL in text), so a query finds what a write stored."""
    return text.replace("\x00", "\ufffd")


class AuditLog:
    """Records calls through a background writer; reads through ``query``. Thread-safe."""

    def __init__(self, database: sa.Engine, *, max_queue: int = MAX_QUEUE, batch: int = BATCH) -> None:
        self.database = database
        self.batch = batch
        self.dropped = 0  # records lost: the queue was full, or the log was closed
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=max_queue)
        self._lock = threading.Lock()
        self._done = threading.Condition(self._lock)
        self._queued = 0  # records accepted
        self._settled = 0  # records written, or given up on
        self._thread: threading.Thread | None = None
        self._closed = False
        self._closing = threading.Event()  # wakes a writer waiting to retry
        self._overflowing = False

    # -- the caller's side

    def record(self, record: AuditRecord) -> None:
        """Queues ``record`` for the writer; never blocks (a full queue drops it, see the module)."""
        with self._lock:
            if self._closed:
                self.dropped += 1
                return
            self._start_locked()
            try:
                self._queue.put_nowait(record)
            except queue.Full:
                self.dropped += 1
                if not self._overflowing:
                    self._overflowing = True
                    logger.warning("audit log: queue full (%d records): dropping records until it drains "
                                   "(%d dropped so far)", self._queue.maxsize, self.dropped)
                return
            self._queued += 1

    def flush(self, timeout: float = 10.0) -> bool:
        """Waits until every record queued before the call is written (or given up on); False when
        ``timeout`` passed first."""
        deadline = time.monotonic() + timeout
        with self._done:
            target = self._queued
            while self._settled < target:
                left = deadline - time.monotonic()
                if left <= 0 or self._thread is None or not self._thread.is_alive():
                    return self._settled >= target
                self._done.wait(left)
        return True

    def close(self, timeout: float = 10.0) -> None:
        """Writes what is queued (waiting at most ``timeout``) and stops the writer; records after
        this are dropped."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._closing.set()
            thread = self._thread
        if thread is None:
            return
        with contextlib.suppress(queue.Full):
            self._queue.put(_STOP, timeout=timeout)
        thread.join(timeout)
        if thread.is_alive():
            logger.warning("audit log: %d record(s) not written at shutdown", self._queued - self._settled)

    def query(self, flt: AuditFilter, *, limit: int = 100, cursor: int | None = None) -> AuditPage:
        return query_audit(self.database, flt, limit=limit, cursor=cursor)

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the writer's side

    def _start_locked(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="sdgate-audit", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            batch: list[AuditRecord] = []
            stop = first is _STOP
            if not stop:
                batch.append(first)
            while not stop and len(batch) < self.batch:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is _STOP:
                    stop = True
                else:
                    batch.append(item)
            if batch:
                self._write(batch)
            if stop:
                return

    def _write(self, batch: Sequence[AuditRecord]) -> None:
        rows = [_row(r) for r in batch]
        for attempt in range(len(_RETRY_S) + 1):
            try:
                self._insert(rows)
                break
            except (StorageFull, StorageUnavailable) as exc:
                if attempt == len(_RETRY_S) or self._closing.is_set():
                    logger.warning("audit log: %d record(s) lost: %s", len(rows), exc)
                    self._lost(len(rows))
                    break
                if attempt == 0:
                    logger.warning("audit log: cannot write (%s); retrying", exc)
                self._closing.wait(_RETRY_S[attempt])
            except Exception:
                self._write_one_by_one(rows)
                break
        with self._done:
            self._settled += len(rows)
            if self._overflowing and self._queue.qsize() < self._queue.maxsize // 2:
                self._overflowing = False
                logger.info("audit log: queue drained (%d dropped in all)", self.dropped)
            self._done.notify_all()

    def _write_one_by_one(self, rows: Iterable[dict[str, Any]]) -> None:
        for row in rows:
            try:
                self._insert([row])
            except Exception:
                logger.exception("audit log: a record could not be written")
                self._lost(1)

    def _lost(self, count: int) -> None:
        with self._lock:
            self.dropped += count

    def _insert(self, rows: list[dict[str, Any]]) -> None:
        with transaction(self.database, write=True) as conn:
            conn.execute(sa.insert(audit_log), rows)
