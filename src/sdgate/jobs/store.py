"""``SqlJobStore``: the ``JobStore`` contract on SQLAlchemy Core, one behaviour on SQLite and PostgreSQL.

Every method is one short transaction. Writes that change a job return the new row (``UPDATE ...
RETURNING``), append the change to the outbox (``outbox.py``) in the same transaction and, once
committed, publish it to ``JobEvents`` when the store was given one, so an in-process waiter wakes
at once; other processes read the outbox.

A claim is a lease: the job is the claiming worker's until ``lease_expires_at``, which the worker
renews (``heartbeat``, and every progress write). ``requeue_expired`` hands back only jobs whose
lease ran out, whichever process calls it, so a process that starts never takes a live worker's job.

Claiming is portable: ``SELECT ... FOR UPDATE SKIP LOCKED`` (a no-op on SQLite, where the write
transaction itself is ``BEGIN IMMEDIATE`` and so already exclusive) followed by a conditional
``UPDATE ... WHERE state = 'queued'``. No two workers, threads or processes claim the same job.
Within one priority claims are fair across owners (round-robin): each job gets a ``turn`` at
submit, the one after its owner's last queued job (else the queue's current turn), and a claim
takes the highest priority, then the lowest turn, then FIFO, so one owner's 1,000 queued jobs do
not starve another's single job; one owner's jobs stay FIFO, priority still wins, and anonymous
jobs (owner None) count as one owner.
A claim may prefer the jobs of the models the worker holds loaded (model affinity): among the jobs
of the highest priority, the first (by turn, then FIFO) naming such a model goes before the head of
the queue, unless the head has waited ``affinity_s`` already, so no job waits more than that for
its turn.

The transaction that ends a job that ran also adds its run time to its owner's GPU seconds of
the day (``usage.py``), so quotas count each run exactly once.

The worker registry (``workers.py``) lives in the same database: ``register_worker``,
``worker_seen``, ``remove_worker``, ``list_workers``.

PostgreSQL runs at READ COMMITTED, so every read-then-write locks what it read: a control request
and a delete lock the job row (``FOR UPDATE``; a claim then skips it), the lease sweep takes only
rows nobody holds (``SKIP LOCKED``) and re-checks the lease in its ``UPDATE``, a preview write
holds the job row shared so the job cannot end under it. Outbox rows are appended without a
global lock: each carries its transaction id on PostgreSQL, and the outbox follower reads behind
that fence, so it never skips a row that committed late (``outbox.py``); one job's rows follow its
commit order in ``seq`` (every write locks the job's row first), which an SSE ``Last-Event-ID`` of
that job resumes by.
A job id or owner holding NUL (which PostgreSQL's text cannot hold) matches nothing, as on SQLite.
"""

from __future__ import annotations

import builtins
import json
import logging
import math
import os
import re
import threading
import uuid
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa

from sdgate.core.batching import batch_key
from sdgate.core.errors import Conflict, NotFound, QueueFull, StorageUnavailable, TooManyJobs
from sdgate.core.jobs import (
    ControlAction,
    Job,
    JobEventKind,
    JobState,
    Outcome,
    Progress,
    Reservation,
    WorkerInfo,
)
from sdgate.core.requests import GenerationRequest, GraphRequest, PostprocessRequest, parse_job_request
from sdgate.core.results import GenerationResult
from sdgate.jobs import queries
from sdgate.jobs.database import (
    create_db_engine,
    ensure_schema,
    note_written,
    probe_write,
    serialize,
    storage_health,
    transaction,
)
from sdgate.jobs.events import JobEvents
from sdgate.jobs.notify import CHANNEL, notice
from sdgate.jobs.outbox import append_events, write_event, write_events
from sdgate.jobs.schema import idempotency_keys, job_previews, jobs
from sdgate.jobs.usage import refund_images, refund_unused, settle
from sdgate.jobs.workers import WORKER_TTL_S, WorkerRegistry

logger = logging.getLogger(__name__)

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_SURROGATE = re.compile("[\ud800-\udfff]")
_MAX_READ_DEPTH = 64  # levels of a stored document a reader gets; submit allows max_metadata_depth
# A later request never weakens an earlier one: a cancel is not turned back into a skip.
_CONTROL_RANK = {ControlAction.SKIP: 0, ControlAction.INTERRUPT: 1, ControlAction.CANCEL: 2}
DEFAULT_LEASE_S = 30.0
# How long a queued job may be passed over for jobs of a worker's loaded models.
DEFAULT_AFFINITY_S = 10.0
_MODEL_CHARS = 255  # the ``model`` column; a longer name (no model has one) gets no affinity
_STATE_EVENT = {
    JobState.QUEUED: JobEventKind.QUEUED,
    JobState.RUNNING: JobEventKind.STARTED,
    JobState.SUCCEEDED: JobEventKind.SUCCEEDED,
    JobState.FAILED: JobEventKind.FAILED,
    JobState.CANCELLED: JobEventKind.CANCELLED,
}


def new_job_id() -> str:
    """``job_`` + a ULID: 48 bits of milliseconds then 80 random bits, Crockford base32, so ids
    sort by creation time (to the millisecond; the ``seq`` column orders within one)."""
    value = (int(datetime.now(UTC).timestamp() * 1000) << 80) | int.from_bytes(os.urandom(10))
    chars = [_CROCKFORD[(value >> shift) & 31] for shift in range(125, -1, -5)]
    return "job_" + "".join(chars)


def _now() -> datetime:
    return datetime.now(UTC)


def _worker_lost_message(attempts: int) -> str:
    times = {1: "once", 2: "twice"}.get(attempts, f"{attempts} times")
    return (
        f"the worker died while running this job {times}; it is not retried automatically "
        "(submit it again, perhaps smaller)"
    )


def _readable(value: Any, *, drop_nonfinite: bool = False, depth: int = 0) -> Any:
    """A stored JSON document as any response can encode it, for rows written before submit
    checked everything: lone surrogates (``"\\ud800"`` decodes to one) escaped as text, non-finite
    numbers null, or left out of an object with ``drop_nonfinite`` (a request's field then takes
    its default), and what is nested deeper than ``_MAX_READ_DEPTH`` null (a 500-deep metadata
    once broke every listing). Clean documents come back as they are (``_clean``)."""
    if depth == 0 and _clean(value):
        return value
    if isinstance(value, str):
        if value.isascii() or _SURROGATE.search(value) is None:
            return value
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict | list) and depth >= _MAX_READ_DEPTH:
        return None
    if isinstance(value, dict):
        return {
            _readable(k): _readable(v, drop_nonfinite=drop_nonfinite, depth=depth + 1)
            for k, v in value.items()
            if not (drop_nonfinite and isinstance(v, float) and not math.isfinite(v))
        }
    if isinstance(value, list):
        return [_readable(v, drop_nonfinite=drop_nonfinite, depth=depth + 1) for v in value]
    return value


def _clean(value: Any) -> bool:
    """True when ``value`` needs no repair by ``_readable``: one pass of the C JSON encoder instead
    of a walk in Python (a job row holds several documents, read several times per job). It refuses
    non-finite numbers, text that is not UTF-8 (a lone surrogate), and counts the brackets: fewer
    than ``_MAX_READ_DEPTH`` cannot nest that deep. Anything else is left to the walk."""
    if value is None or isinstance(value, bool | int):
        return True
    try:
        text = json.dumps(value, allow_nan=False, ensure_ascii=False)
        text.encode("utf-8")
    except (ValueError, TypeError, RecursionError):  # UnicodeEncodeError is a ValueError
        return False
    return text.count("{") + text.count("[") < _MAX_READ_DEPTH


def _modelable(name: str | None) -> bool:
    """A model name the ``model`` column can hold (PostgreSQL's text holds no NUL)."""
    return bool(name) and len(name or "") <= _MODEL_CHARS and "\x00" not in (name or "")


def _new_row(request: GenerationRequest | PostprocessRequest | GraphRequest, dialect: str, owner: str | None,
             priority: int, metadata: dict[str, Any] | None, now: datetime,
             reservation: Reservation | None = None) -> dict[str, Any]:
    """A new queued job's column values (its turn is computed by the INSERT)."""
    return {
        "id": new_job_id(),
        "state": JobState.QUEUED.value,
        "dialect": dialect,
        "owner": owner,
        "priority": priority,
        "request": request.model_dump(mode="json"),
        "model": _job_model(request),
        "batch_key": batch_key(request),
        "meta": metadata or {},
        "created_at": now,
        "updated_at": now,
        "attempts": 0,
        "reserved_images": reservation.images if reservation is not None else 0,
        "reserved_day": reservation.day if reservation is not None else None,
    }


def _job_model(request: GenerationRequest | PostprocessRequest | GraphRequest) -> str | None:
    """What a claim's model affinity matches: the model a generation names (dialects store the
    catalog's name), None for the default model and for extras."""
    model = request.model if isinstance(request, GenerationRequest | GraphRequest) else None
    return model if _modelable(model) else None


def _check_id(job_id: str) -> None:
    """No job id holds NUL (PostgreSQL's text cannot even compare one): such an id is not found."""
    if "\x00" in job_id:
        raise NotFound(f"job {job_id!r} not found")


def _to_job(row: sa.Row[Any]) -> Job:
    m = row._mapping
    result = _readable(m["result"], drop_nonfinite=True)
    return Job(
        id=m["id"],
        state=JobState(m["state"]),
        request=parse_job_request(_readable(m["request"], drop_nonfinite=True)),
        dialect=m["dialect"],
        owner=m["owner"],
        priority=m["priority"],
        metadata=_readable(m["meta"]),
        created_at=m["created_at"],
        started_at=m["started_at"],
        finished_at=m["finished_at"],
        attempts=m["attempts"],
        worker_id=m["worker_id"],
        control=ControlAction(m["control"]) if m["control"] else None,
        progress=Progress.model_validate(_readable(m["progress"])) if m["progress"] else None,
        result=GenerationResult.model_validate(result) if result else None,
        error=_readable(m["error"]),
    )


class SqlJobStore:
    """Durable jobs in one table. Thread-safe; open one per process and share it.

    ``events``: where state changes and progress are published (pass the same ``JobEvents`` to the
    worker). ``max_queue``: ``submit`` raises ``QueueFull`` when this many jobs are queued.
    ``lease_s``: how long a claim holds a job without a heartbeat. ``migrate``: check the schema
    at start (``database.ensure_schema``: SQLite is upgraded, PostgreSQL only when empty; a schema
    it will not use raises ``SchemaMismatch``, a database it cannot reach ``DatabaseUnreachable``).
    ``affinity_s``: how long a queued job may be passed over for a worker's loaded models.
    ``worker_ttl_s``: a registered worker not heard from for this long is stale.
    """

    def __init__(
        self,
        database_url: str,
        *,
        events: JobEvents | None = None,
        max_queue: int | None = None,
        migrate: bool = True,
        lease_s: float = DEFAULT_LEASE_S,
        affinity_s: float = DEFAULT_AFFINITY_S,
        worker_ttl_s: float = WORKER_TTL_S,
    ) -> None:
        self._engine = create_db_engine(database_url)
        self._events = events
        self._max_queue = max_queue
        self.lease_s = lease_s
        self.affinity_s = affinity_s
        self._workers = WorkerRegistry(self._tx, ttl_s=worker_ttl_s)
        # Marks this store's outbox rows, so its own follower does not publish them twice.
        self.origin = uuid.uuid4().hex[:16]
        self._commit_hooks: builtins.list[Callable[[], None]] = []
        # An in-memory SQLite database is one shared connection: its transactions must take turns.
        single = isinstance(self._engine.pool, sa.StaticPool)
        self._serial: threading.Lock | None = threading.Lock() if single else None
        if migrate:
            try:
                ensure_schema(self._engine)
            except BaseException:
                self._engine.dispose()
                raise

    @property
    def database(self) -> sa.Engine:
        """The SQLAlchemy engine (for migrations tooling and tests)."""
        return self._engine

    @property
    def storage_fault(self) -> StorageUnavailable | None:
        """Why the database refused the last write (disk full, read-only), until one succeeds."""
        return storage_health(self._engine).fault

    def probe_write(self) -> None:
        """A real write that changes nothing; raises ``StorageUnavailable`` while the disk refuses."""
        probe_write(self._engine)

    def close(self) -> None:
        self._engine.dispose()

    def on_commit(self, hook: Callable[[], None]) -> None:
        """``hook()`` after every committed change of a job (an outbox follower's ``wake``)."""
        self._commit_hooks.append(hook)

    def __enter__(self) -> SqlJobStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- reading -----------------------------------------------------------------------------

    def get(self, job_id: str) -> Job:
        _check_id(job_id)
        with self._tx(single=True) as conn:
            row = conn.execute(queries.GET, {"job_id": job_id}).one_or_none()
        if row is None:
            raise NotFound(f"job {job_id} not found")
        return _to_job(row)

    def list(
        self,
        *,
        states: tuple[JobState, ...] | None = None,
        dialect: str | None = None,
        owner: str | None = None,
        limit: int = 50,
    ) -> builtins.list[Job]:
        query = sa.select(jobs).order_by(jobs.c.seq.desc()).limit(limit)
        if states is not None:
            query = query.where(jobs.c.state.in_([s.value for s in states]))
        if dialect is not None:
            query = query.where(jobs.c.dialect == dialect)
        if owner is not None:
            if "\x00" in owner:
                return []
            query = query.where(jobs.c.owner == owner)
        with self._tx() as conn:
            return [_to_job(row) for row in conn.execute(query)]

    def position(self, job_id: str) -> int | None:
        _check_id(job_id)
        with self._tx() as conn:
            row = conn.execute(
                sa.select(jobs.c.state, jobs.c.priority, jobs.c.turn, jobs.c.seq).where(jobs.c.id == job_id)
            ).one_or_none()
            if row is None:
                raise NotFound(f"job {job_id} not found")
            if row.state != JobState.QUEUED:
                return None
            # The claim's order: priority, then turn, then seq.
            ahead = sa.or_(
                jobs.c.priority > row.priority,
                sa.and_(jobs.c.priority == row.priority, jobs.c.turn < row.turn),
                sa.and_(jobs.c.priority == row.priority, jobs.c.turn == row.turn, jobs.c.seq < row.seq),
            )
            return self._count_queued(conn, ahead)

    def queue_depth(self) -> int:
        with self._tx() as conn:
            return self._count_queued(conn)

    def count_by_state(self) -> dict[str, int]:
        counts = {state.value: 0 for state in JobState}
        with self._tx() as conn:
            rows = conn.execute(sa.select(jobs.c.state, sa.func.count()).group_by(jobs.c.state)).all()
        for state, n in rows:
            counts[str(state)] = int(n)
        return counts

    def pending_control(self, job_id: str) -> ControlAction | None:
        _check_id(job_id)
        with self._tx(single=True) as conn:
            row = conn.execute(queries.CONTROL, {"job_id": job_id}).one_or_none()
        if row is None:
            raise NotFound(f"job {job_id} not found")
        return ControlAction(row.control) if row.control else None

    # -- writing -----------------------------------------------------------------------------

    def submit(
        self,
        request: GenerationRequest | PostprocessRequest | GraphRequest,
        *,
        dialect: str = "native",
        owner: str | None = None,
        priority: int = 0,
        metadata: dict[str, Any] | None = None,
        max_owner_jobs: int | None = None,
        idempotency_key: tuple[str, str] | None = None,
        reservation: Reservation | None = None,
    ) -> Job:
        """Queues a job. ``QueueFull`` when ``max_queue`` jobs wait; ``TooManyJobs`` when ``owner``
        (``None``: the anonymous owner) already has ``max_owner_jobs`` jobs queued or running,
        counted in the write transaction that inserts, so concurrent submits cannot overshoot.
        ``idempotency_key``: the ``(scope, key)`` this submission claimed (``IdempotencyKeys``);
        the key records the job in the same transaction, so a job never exists without its key (a
        retry after a lost answer finds the job instead of making a second one)."""
        now = _now()
        values = _new_row(request, dialect, owner, priority, metadata, now, reservation)
        params = {f"v_{name}": values[name] for name in queries.SUBMIT_COLUMNS}
        params.update(p_owner=owner, p_priority=priority)
        unlimited = self._max_queue is None and max_owner_jobs is None and idempotency_key is None
        if unlimited and self._engine.dialect.name == "postgresql":
            # Nothing to count or record beside it: the INSERT, its outbox row and NOTIFY in one
            # statement, in autocommit (one round trip).
            params.update(self._event_params(JobEventKind.QUEUED, now))
            with self._tx(write=True, single=True) as conn:
                row = conn.execute(queries.submit_announced(owner is None), params).one()
                note_written(conn)
            return self._announced(_to_job(row))
        with self._tx(write=True) as conn:
            if self._max_queue is not None or max_owner_jobs is not None:
                serialize(conn, "jobs.queue")  # the counts stay true until this insert commits
            if self._max_queue is not None and self._count_queued(conn) >= self._max_queue:
                raise QueueFull(f"the queue is full ({self._max_queue} jobs waiting)")
            if max_owner_jobs is not None and self._count_held(conn, owner) >= max_owner_jobs:
                raise TooManyJobs(
                    f"you already have {max_owner_jobs} job(s) queued or running, the most allowed "
                    "at once; submit more when one finishes"
                )
            row = conn.execute(queries.submit(owner is None), params).one()
            if idempotency_key is not None:
                scope, key = idempotency_key
                conn.execute(
                    sa.update(idempotency_keys)
                    .where(idempotency_keys.c.scope == scope, idempotency_keys.c.key == key,
                           idempotency_keys.c.job_id.is_(None))
                    .values(job_id=values["id"])
                )
            job = self._record(conn, row)
        return self._announced(job)

    def submit_many(
        self,
        requests: Sequence[GenerationRequest | PostprocessRequest | GraphRequest],
        *,
        dialect: str = "native",
        owner: str | None = None,
        priority: int = 0,
        metadata: dict[str, Any] | None = None,
        max_owner_jobs: int | None = None,
    ) -> builtins.list[Job]:
        """Queues several jobs of one caller in one transaction, as ``submit`` would one after the
        other: in the order given (FIFO), each job the turn after the one before (fair scheduling
        sees one owner's run of jobs), one ``queued`` outbox row each in one INSERT (one NOTIFY).
        All or none: ``QueueFull`` when the queue cannot take them all below ``max_queue``,
        ``TooManyJobs`` when ``owner`` would hold more than ``max_owner_jobs`` queued or running.
        No idempotency key: a caller that needs one submits alone."""
        if not requests:
            return []
        now = _now()
        rows = [_new_row(request, dialect, owner, priority, metadata, now) for request in requests]
        count = len(rows)
        with self._tx(write=True) as conn:
            if self._max_queue is not None or max_owner_jobs is not None:
                serialize(conn, "jobs.queue")  # the counts stay true until this insert commits
            if self._max_queue is not None and self._count_queued(conn) + count > self._max_queue:
                raise QueueFull(f"the queue is full ({self._max_queue} jobs waiting)")
            if max_owner_jobs is not None and self._count_held(conn, owner) + count > max_owner_jobs:
                raise TooManyJobs(
                    f"you may have {max_owner_jobs} job(s) queued or running at once; these {count} "
                    "would be more: submit more when some finish"
                )
            first = conn.execute(queries.base_turn(owner is None),
                                 {"p_owner": owner, "p_priority": priority}).scalar_one()
            for turn, row in enumerate(rows, start=int(first)):
                row["turn"] = turn
            conn.execute(queries.SUBMIT_MANY, rows)
            # Nothing of a new row is the database's own but its seq: the jobs are made from what
            # was written, the requests as given (not read back and parsed again).
            submitted = [
                Job(id=row["id"], state=JobState.QUEUED, request=request, dialect=dialect, owner=owner,
                    priority=priority, metadata=row["meta"], created_at=now, attempts=0)
                for row, request in zip(rows, requests, strict=True)
            ]
            append_events(conn, [(JobEventKind.QUEUED, job) for job in submitted], self.origin)
        self._announced_all([(JobEventKind.QUEUED, job) for job in submitted])
        return submitted

    def claim_next(self, worker_id: str, *, prefer_models: Collection[str] = ()) -> Job | None:
        """The next job, running and leased to ``worker_id``: the head of the queue (highest
        priority, then turn, then FIFO), or, when the head has waited less than ``affinity_s``, the
        first job of the same priority naming one of ``prefer_models`` (the worker's loaded models)."""
        now = _now()
        preferred = [m for m in dict.fromkeys(prefer_models) if _modelable(m)]
        with self._tx(write=True) as conn:
            while True:
                pick = self._pick(conn, preferred, now)
                if pick is None:
                    return None
                claim = {**self._claim_values(worker_id, now), "w_seq": pick[0]}
                if conn.dialect.name == "postgresql":  # the claim and its outbox row: one statement
                    claim.update(self._event_params(JobEventKind.STARTED, now))
                    row = conn.execute(queries.CLAIM_ANNOUNCED, claim).one_or_none()
                    if row is not None:
                        note_written(conn)
                        job = _to_job(row)
                        break
                    continue
                row = conn.execute(queries.CLAIM, claim).one_or_none()
                if row is not None:
                    job = self._record(conn, row)
                    break
        return self._announced(job)

    def claim_group(self, worker_id: str, *, prefer_models: Collection[str] = (), limit: int = 1,
                    batched: bool = False) -> builtins.list[Job]:
        """Up to ``limit`` jobs claimed together in one transaction (one ``started`` row each, in
        one INSERT): the job ``claim_next`` would take, then queued jobs of its priority naming the
        same model (a compatible group), in claim order. All are running and leased to ``worker_id``
        from now; the worker runs them one after the other, so it asks for more than one only while
        its jobs take milliseconds (none then waits long in its hands). Empty when none is queued.

        ``batched``: the mates are instead the queued jobs of the pick's priority and batch key
        (``core.batching``: jobs an engine may run as rows of one batch); a pick with no key
        (a job that runs alone) is claimed alone."""
        now = _now()
        preferred = [m for m in dict.fromkeys(prefer_models) if _modelable(m)]
        with self._tx(write=True) as conn:
            while True:
                pick = self._pick(conn, preferred, now)
                if pick is None:
                    return []
                seq, priority, model, key = pick
                seqs = [seq]
                if limit > 1 and batched:
                    if key is not None:
                        mates = {"priority": priority, "batch_key": key, "w_seq": seq, "limit": limit - 1}
                        seqs += conn.execute(queries.BATCH_MATES, mates).scalars().all()
                elif limit > 1:
                    mates = {"priority": priority, "model": model, "w_seq": seq, "limit": limit - 1}
                    seqs += conn.execute(queries.group_mates(model is None), mates).scalars().all()
                claim = {**self._claim_values(worker_id, now), "w_seqs": seqs}
                postgresql = conn.dialect.name == "postgresql"
                if postgresql:  # the claim and its outbox rows: one statement
                    claim.update(self._event_params(JobEventKind.STARTED, now))
                rows = conn.execute(queries.CLAIM_GROUP_ANNOUNCED if postgresql else queries.CLAIM_GROUP,
                                    claim).all()
                if rows:
                    break
            # The pick comes first: its group mates follow it in claim order.
            claimed = [_to_job(row) for row in sorted(rows, key=lambda r: (r.seq != seq, r.turn, r.seq))]
            if postgresql:
                note_written(conn)
            else:
                write_events(conn, JobEventKind.STARTED, claimed, self.origin)
        for job in claimed:
            self._announced(job)
        return claimed

    def _pick(self, conn: sa.Connection, preferred: builtins.list[str], now: datetime
              ) -> tuple[int, int, str | None, str | None] | None:
        """The job a claim takes, locked: ``(seq, priority, model, batch_key)``, or None when none
        is queued."""
        head = conn.execute(queries.CLAIM_HEAD).one_or_none()
        if head is None:
            return None
        if preferred and head.model not in preferred and now - head.created_at < self._affinity:
            found = conn.execute(
                queries.CLAIM_PREFERRED, {"priority": head.priority, "models": preferred}
            ).one_or_none()
            if found is not None:
                return found.seq, head.priority, found.model, found.batch_key
        return head.seq, head.priority, head.model, head.batch_key

    def _event_params(self, kind: JobEventKind, now: datetime) -> dict[str, Any]:
        """The parameters of the outbox row a PostgreSQL ``*_announced`` statement appends."""
        return {"e_kind": kind.value, "e_origin": self.origin, "e_created_at": now,
                **notice(self.origin, kind.value)}

    def _claim_values(self, worker_id: str, now: datetime) -> dict[str, Any]:
        return {"v_worker_id": worker_id, "v_started_at": now, "v_updated_at": now,
                "v_lease_expires_at": self._lease_end(now)}

    def update_progress(self, job_id: str, progress: Progress) -> None:
        """Also renews the lease: progress is the worker's heartbeat."""
        now = _now()
        values = {"progress": progress.model_dump(mode="json"), "lease_expires_at": self._lease_end(now)}
        job = self._update(job_id, (JobState.RUNNING,), values, kind=JobEventKind.PROGRESS)
        if job is not None:
            self._announced(job, JobEventKind.PROGRESS)

    def heartbeat(self, job_id: str, worker_id: str) -> bool:
        """Renews ``worker_id``'s lease on a running job; False when the job is no longer its own
        (finished, deleted, or re-queued after the lease ran out)."""
        if "\x00" in job_id:
            return False
        now = _now()
        with self._tx(write=True, single=True) as conn:  # one UPDATE: autocommit on PostgreSQL
            renewed = conn.execute(
                queries.HEARTBEAT,
                {"job_id": job_id, "w_worker_id": worker_id, "v_lease_expires_at": self._lease_end(now)},
            ).rowcount
        return bool(renewed)

    def put_preview(self, job_id: str, png: bytes, *, iteration: int, step: int) -> None:
        """Keeps ``png`` as the running job's latest preview (dropped when the job ends)."""
        now = _now()
        with self._tx(write=True) as conn:
            state = conn.execute(  # held shared: the job cannot end (and drop its preview) meanwhile
                sa.select(jobs.c.state).where(jobs.c.id == job_id).with_for_update(read=True)
            ).scalar_one_or_none()
            if state != JobState.RUNNING.value:
                return
            values = {"iteration": iteration, "step": step, "png": png, "updated_at": now}
            updated = conn.execute(
                sa.update(job_previews).where(job_previews.c.job_id == job_id).values(values)
            ).rowcount
            if not updated:
                conn.execute(sa.insert(job_previews).values(job_id=job_id, **values))

    def preview(self, job_id: str) -> bytes | None:
        """The latest preview PNG of a running job, whichever process runs it."""
        if "\x00" in job_id:
            return None
        with self._tx() as conn:
            png = conn.execute(
                sa.select(job_previews.c.png).where(job_previews.c.job_id == job_id)
            ).scalar_one_or_none()
        return bytes(png) if png is not None else None

    def request_control(self, job_id: str, action: ControlAction) -> Job:
        _check_id(job_id)
        now = _now()
        with self._tx(write=True) as conn:
            current = conn.execute(  # locked: a claim cannot start the job between read and write
                sa.select(jobs.c.state, jobs.c.control).where(jobs.c.id == job_id).with_for_update()
            ).one_or_none()
            if current is None:
                raise NotFound(f"job {job_id} not found")
            state = JobState(current.state)
            if state.terminal:
                raise Conflict(f"job {job_id} is already {state.value}")
            values: dict[str, Any] = {"updated_at": now}
            if action is ControlAction.CANCEL and state is JobState.QUEUED:
                values.update(state=JobState.CANCELLED.value, control=action.value, finished_at=now)
            else:
                held = ControlAction(current.control) if current.control else None
                if held is None or _CONTROL_RANK[action] > _CONTROL_RANK[held]:
                    values["control"] = action.value
            row = conn.execute(
                sa.update(jobs).where(jobs.c.id == job_id).values(values).returning(jobs)
            ).one()
            job = _to_job(row)
            if job.state is not state:
                settle(conn, row)
                self._append_event(conn, _STATE_EVENT[job.state], job)
        if job.state is not state:
            self._announced(job)
        return job

    def clear_control(self, job_id: str, action: ControlAction) -> None:
        """The worker consumed ``action`` (a skip applies to one iteration). A different request
        made meanwhile (a cancel after the skip) is kept."""
        with self._tx(write=True) as conn:
            conn.execute(
                sa.update(jobs)
                .where(jobs.c.id == job_id, jobs.c.control == action.value)
                .values(control=None, updated_at=_now())
            )

    # ``worker_id``: the worker recording its job's outcome; a job it no longer holds (its lease
    # expired and another worker claimed it) raises ``Conflict`` and is left to its new holder.

    def succeed(self, job_id: str, result: GenerationResult, *, worker_id: str | None = None,
                progress: Progress | None = None) -> Job:
        return self._finish(job_id, JobState.SUCCEEDED, (JobState.RUNNING,), worker_id, progress,
                            result=result.model_dump(mode="json"))

    def fail(self, job_id: str, error: dict[str, str], *, worker_id: str | None = None,
             progress: Progress | None = None) -> Job:
        states = (JobState.RUNNING,) if worker_id is not None else (JobState.QUEUED, JobState.RUNNING)
        return self._finish(job_id, JobState.FAILED, states, worker_id, progress, error=error)

    def cancelled(
        self, job_id: str, result: GenerationResult | None = None, *, worker_id: str | None = None,
        progress: Progress | None = None,
    ) -> Job:
        states = (JobState.RUNNING,) if worker_id is not None else (JobState.QUEUED, JobState.RUNNING)
        return self._finish(job_id, JobState.CANCELLED, states, worker_id, progress,
                            result=result.model_dump(mode="json") if result is not None else None)

    def finish_many(self, outcomes: Sequence[Outcome], *, worker_id: str
                    ) -> builtins.list[Job | Conflict | NotFound]:
        """Records the outcomes of jobs ``worker_id`` holds (a claimed group run one after the
        other, or one batch) in one transaction, each as ``succeed`` / ``fail`` / ``cancelled``
        would: its terminal state, its last step (``progress``), its preview dropped, its run
        charged to its owner's day, one outbox row each (one INSERT, one NOTIFY per kind). One
        job's refusal is its own: per outcome, in order, the finished job or the error the single
        call would raise (``Conflict``: no longer held by ``worker_id``, or already ended;
        ``NotFound``); the others are recorded. On PostgreSQL the whole group is one statement
        (``queries.FINISH_MANY_ANNOUNCED``), and an outcome that carries its ``held`` job is not
        read back: its finished job is that one with what the statement returns."""
        if not outcomes:
            return []
        ends = (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)
        if any(outcome.state not in ends for outcome in outcomes):
            raise ValueError("an outcome's state is succeeded, failed or cancelled")
        if len({outcome.job_id for outcome in outcomes}) != len(outcomes):
            raise ValueError("one outcome per job")
        given = [outcome for outcome in outcomes if "\x00" not in outcome.job_id]
        if self._engine.dialect.name == "postgresql":
            done = self._finish_many_pg(given, worker_id) if given else {}
        else:
            done = self._finish_many_sql(given, worker_id)
        self._announced_all([(_STATE_EVENT[job.state], job) for job in done.values()])
        return [done.get(o.job_id) or self._refusal(o.job_id, o.state, worker_id) for o in outcomes]

    def _finish_many_sql(self, outcomes: Sequence[Outcome], worker_id: str) -> dict[str, Job]:
        """``finish_many`` as one statement per outcome in one transaction (SQLite)."""
        now = _now()
        done: dict[str, Job] = {}
        with self._tx(write=True) as conn:
            for outcome in outcomes:
                values = {"state": outcome.state.value, "finished_at": now, "lease_expires_at": None,
                          "updated_at": now}
                if outcome.state is JobState.FAILED:
                    values["error"] = outcome.error or {}
                else:
                    values["result"] = outcome.result.model_dump(mode="json") if outcome.result else None
                if outcome.progress is not None:
                    values["progress"] = outcome.progress.model_dump(mode="json")
                params = {f"v_{key}": value for key, value in values.items()}
                params.update(job_id=outcome.job_id, w_worker_id=worker_id)
                statement = queries.change(tuple(values), (JobState.RUNNING.value,), True, False)
                row = conn.execute(statement, params).one_or_none()
                if row is None:
                    continue
                conn.execute(queries.DROP_PREVIEW, {"job_id": outcome.job_id})
                settle(conn, row)
                done[outcome.job_id] = _to_job(row)
            append_events(conn, [(_STATE_EVENT[job.state], job) for job in done.values()], self.origin)
        return done

    def _finish_many_pg(self, outcomes: Sequence[Outcome], worker_id: str) -> dict[str, Job]:
        """``finish_many`` on PostgreSQL: one statement for every outcome (in autocommit: it is its
        own transaction), then the refunds of images reserved and not made, for the jobs that
        reserved some (a second statement each, as ``_update_pg``)."""
        now = _now()

        def text(value: Any) -> str | None:
            return None if value is None else json.dumps(value)

        params = {
            "o_ids": [o.job_id for o in outcomes],
            "o_states": [o.state.value for o in outcomes],
            "o_results": [text(o.result.model_dump(mode="json")) if o.result is not None
                          and o.state is not JobState.FAILED else None for o in outcomes],
            "o_errors": [text(o.error or {}) if o.state is JobState.FAILED else None for o in outcomes],
            "o_progress": [text(o.progress.model_dump(mode="json")) if o.progress is not None else None
                           for o in outcomes],
            "v_now": now, "w_worker_id": worker_id, "e_origin": self.origin,
            "channel": CHANNEL,  # every end's kind rings there
        }
        with self._tx(write=True, single=True) as conn:
            rows = conn.execute(queries.FINISH_MANY_ANNOUNCED, params).all()
            for row in rows:
                unused = row.reserved_images - (row.delivered if row.state != JobState.FAILED.value else 0)
                refund_images(conn, row.owner, row.reserved_day, unused)
            if rows:
                note_written(conn)
            unheld = [row.id for row in rows if outcomes[row.n - 1].held is None]
            read = {}
            if unheld:
                read = {row.id: _to_job(row) for row in conn.execute(queries.GET_MANY, {"ids": unheld})}
        done: dict[str, Job] = {}
        for row in rows:
            outcome = outcomes[row.n - 1]
            if outcome.held is None:
                done[row.id] = read[row.id]
                continue
            done[row.id] = outcome.held.model_copy(update={
                "state": JobState(row.state), "owner": row.owner, "priority": row.priority,
                "started_at": row.started_at, "finished_at": row.finished_at, "attempts": row.attempts,
                "worker_id": row.worker_id, "control": ControlAction(row.control) if row.control else None,
                "progress": outcome.progress if outcome.progress is not None or not row.progress
                else Progress.model_validate(_readable(row.progress)),
                "result": outcome.result if outcome.state is not JobState.FAILED else None,
                "error": outcome.error or {} if outcome.state is JobState.FAILED else None,
            })
        return done

    def _refusal(self, job_id: str, state: JobState, worker_id: str | None) -> Conflict | NotFound:
        """Why a job's end was not recorded, the error ``_finish`` raises for it."""
        try:
            current = self.get(job_id)
        except NotFound as exc:
            return exc
        if worker_id is not None and current.state is JobState.RUNNING:
            return Conflict(f"job {job_id} is no longer held by {worker_id}")
        return Conflict(f"job {job_id} is {current.state.value}; it cannot become {state.value}")

    def requeue_expired(self, *, max_attempts: int, now: datetime | None = None) -> builtins.list[str]:
        """Hands back running jobs whose lease ran out (their worker died or lost the database),
        from any process, at start and periodically. A job whose cancel was pending becomes
        cancelled; one that has been started ``max_attempts`` times fails (a poison job that kills
        its worker must not crash-loop the service); the others are queued again, in their old
        place. A job with no lease (left by a version without leases) counts as expired. Returns
        the re-queued ids."""
        now = now or _now()
        changed: builtins.list[Job] = []
        with self._tx(write=True) as conn:
            expired = sa.and_(
                jobs.c.state == JobState.RUNNING.value,
                sa.or_(jobs.c.lease_expires_at.is_(None), jobs.c.lease_expires_at < now),
            )
            # Rows another sweeper (or a heartbeat) holds are left to it; the UPDATE re-checks.
            stranded = conn.execute(
                sa.select(jobs.c.id, jobs.c.attempts, jobs.c.control, jobs.c.priority, jobs.c.turn)
                .where(expired)
                .order_by(jobs.c.seq)
                .with_for_update(skip_locked=True)
            ).all()
            for job_id, attempts, control, priority, turn in stranded:
                values: dict[str, Any] = {"updated_at": now, "lease_expires_at": None}
                if control == ControlAction.CANCEL:
                    values.update(state=JobState.CANCELLED.value, finished_at=now)
                elif attempts >= max_attempts:
                    values.update(
                        state=JobState.FAILED.value,
                        finished_at=now,
                        error={"code": "worker_lost", "message": _worker_lost_message(attempts)},
                    )
                else:
                    # Back in its old place: no later than the queue's current turn (its old seq
                    # puts it first there), never behind jobs its owner queued since.
                    current = conn.execute(queries.current_turn(sa.literal(priority))).scalar_one_or_none()
                    values.update(
                        state=JobState.QUEUED.value,
                        worker_id=None,
                        started_at=None,
                        progress=None,
                        control=None,
                        turn=turn if current is None else min(turn, current),
                    )
                row = conn.execute(
                    sa.update(jobs).where(jobs.c.id == job_id, expired).values(values).returning(jobs)
                ).one_or_none()
                if row is None:
                    continue
                conn.execute(sa.delete(job_previews).where(job_previews.c.job_id == job_id))
                if JobState(row.state).terminal:  # it ran until its worker was lost
                    settle(conn, row)
                changed.append(self._record(conn, row))
        requeued: builtins.list[str] = []
        for job in changed:
            self._announced(job)
            logger.warning("job %s: its worker's lease expired, now %s", job.id, job.state.value)
            if job.state is JobState.QUEUED:
                requeued.append(job.id)
        return requeued

    def delete(self, job_id: str) -> Job:
        """Removes a terminal job's row and returns what it was. Raises ``NotFound``, and
        ``Conflict`` while the job is still queued or running (cancel it first)."""
        _check_id(job_id)
        with self._tx(write=True) as conn:
            row = conn.execute(sa.select(jobs).where(jobs.c.id == job_id).with_for_update()).one_or_none()
            if row is None:
                raise NotFound(f"job {job_id} not found")
            job = _to_job(row)
            if not job.state.terminal:
                raise Conflict(f"job {job_id} is {job.state.value}; cancel it before deleting it")
            conn.execute(sa.delete(jobs).where(jobs.c.id == job_id))
            conn.execute(sa.delete(job_previews).where(job_previews.c.job_id == job_id))
        return job

    # -- the worker registry ------------------------------------------------------------------

    def register_worker(self, info: WorkerInfo) -> None:
        self._workers.register(info)

    def worker_seen(
        self,
        worker_id: str,
        *,
        models: Collection[str],
        free_memory_bytes: int | None,
        current_job_id: str | None,
    ) -> bool:
        return self._workers.seen(
            worker_id, models=models, free_memory_bytes=free_memory_bytes, current_job_id=current_job_id
        )

    def remove_worker(self, worker_id: str) -> None:
        self._workers.remove(worker_id)

    def list_workers(self) -> builtins.list[WorkerInfo]:
        return self._workers.workers()

    def page(
        self,
        *,
        states: tuple[JobState, ...] | None = None,
        owner: str | None = None,
        created_after: datetime | None = None,
        created_before: datetime | None = None,
        metadata: Mapping[str, str] | None = None,
        before_seq: int | None = None,
        limit: int = 50,
    ) -> tuple[builtins.list[Job], int | None]:
        """Newest first, for cursor pagination: the jobs and, when more may follow, the ``seq`` to
        pass as ``before_seq`` for the next page. ``metadata`` matches top-level string values."""
        texts = [owner or "", *(metadata or {}).keys(), *(metadata or {}).values()]
        if any("\x00" in text for text in texts):
            return [], None  # no stored text holds NUL
        query = sa.select(jobs).order_by(jobs.c.seq.desc()).limit(limit + 1)
        if states is not None:
            query = query.where(jobs.c.state.in_([s.value for s in states]))
        if owner is not None:
            query = query.where(jobs.c.owner == owner)
        if created_after is not None:
            query = query.where(jobs.c.created_at >= created_after)
        if created_before is not None:
            query = query.where(jobs.c.created_at < created_before)
        for i, (key, value) in enumerate((metadata or {}).items()):
            query = query.where(self._meta_equals(key, value, i))
        if before_seq is not None:
            query = query.where(jobs.c.seq < before_seq)
        with self._tx() as conn:
            rows = conn.execute(query).all()
        more = len(rows) > limit
        rows = rows[:limit]
        return [_to_job(row) for row in rows], (rows[-1].seq if more and rows else None)

    # -- helpers -----------------------------------------------------------------------------

    def _meta_equals(self, key: str, value: str, n: int) -> sa.ColumnElement[bool]:
        """The job's top-level metadata ``key`` is the string ``value``, for any key: SQLite's JSON
        path syntax cannot quote a key holding ``"`` (``$."a"b"`` is an error), so there the key is
        compared as a value, through ``json_each``; PostgreSQL binds it as a parameter of ``->>``."""
        if self._engine.dialect.name != "sqlite":
            return jobs.c.meta[key].as_string() == value
        each = sa.func.json_each(jobs.c.meta).table_valued("key", "value", "type").alias(f"meta_{n}")
        return sa.exists().where(each.c.key == key, each.c.type == "text", each.c.value == value)

    @contextmanager
    def _tx(self, *, write: bool = False, single: bool = False) -> Iterator[sa.Connection]:
        if self._serial is None:
            with transaction(self._engine, write=write, single=single) as conn:
                yield conn
        else:
            with self._serial, transaction(self._engine, write=write, single=single) as conn:
                yield conn

    @staticmethod
    def _count_held(conn: sa.Connection, owner: str | None) -> int:
        """``owner``'s jobs queued or running."""
        mine = jobs.c.owner.is_(None) if owner is None else jobs.c.owner == owner
        held = jobs.c.state.in_([JobState.QUEUED.value, JobState.RUNNING.value])
        return int(conn.execute(sa.select(sa.func.count()).where(held, mine)).scalar_one())

    @staticmethod
    def _count_queued(conn: sa.Connection, *where: sa.ColumnElement[bool]) -> int:
        query = sa.select(sa.func.count()).where(jobs.c.state == JobState.QUEUED.value, *where)
        return int(conn.execute(query).scalar_one())

    def _update(
        self,
        job_id: str,
        from_states: tuple[JobState, ...],
        values: Mapping[str, Any],
        *,
        kind: JobEventKind | None = None,
        worker_id: str | None = None,
    ) -> Job | None:
        """Changes a job in one of ``from_states`` and records the change (``kind``, or the event
        of its new state) in the outbox, in one transaction. None when the job was in no such state
        (or, with ``worker_id``, is not that worker's)."""
        if "\x00" in job_id:
            return None
        ending = "state" in values and JobState(values["state"]).terminal
        params = {f"v_{key}": value for key, value in values.items()}
        params.update(v_updated_at=_now(), job_id=job_id, w_worker_id=worker_id)
        states = tuple(state.value for state in from_states)
        if self._engine.dialect.name == "postgresql" and (kind is not None or "state" in values):
            keys = (*values, "updated_at")
            return self._update_pg(params, states, keys, kind, ending, worker_id is not None)
        with self._tx(write=True) as conn:
            # PostgreSQL drops an ending job's preview in the same statement (one round trip).
            ending_pg = ending and conn.dialect.name == "postgresql"
            statement = queries.change((*values, "updated_at"), states, worker_id is not None, ending_pg)
            row = conn.execute(statement, params).one_or_none()
            if row is not None and ending and not ending_pg:
                conn.execute(queries.DROP_PREVIEW, {"job_id": job_id})
            if row is None:
                return None
            if ending:
                settle(conn, row)
            return self._record(conn, row, kind)

    def _update_pg(self, params: dict[str, Any], states: tuple[str, ...], keys: tuple[str, ...],
                   kind: JobEventKind | None, ending: bool, held: bool) -> Job | None:
        """``_update`` on PostgreSQL: the change, its preview and usage, its outbox row and NOTIFY
        in one statement (``queries.change_announced``) run in autocommit: one round trip, where
        a transaction of those statements takes four or five."""
        params.update(self._event_params(kind or _STATE_EVENT[JobState(params["v_state"])], _now()))
        with self._tx(write=True, single=True) as conn:
            row = conn.execute(queries.change_announced(keys, states, held, ending), params).one_or_none()
            if ending and row is not None:  # the statement charged the run; images reserved and not
                refund_unused(conn, row)    # made: a second one, only for a job that reserved some
            note_written(conn)
        return None if row is None else _to_job(row)

    def _finish(self, job_id: str, state: JobState, from_states: tuple[JobState, ...],
                worker_id: str | None, progress: Progress | None, **values: Any) -> Job:
        values = {**values, "state": state.value, "finished_at": _now(), "lease_expires_at": None}
        if progress is not None:  # the last step, where the job wrote none as it ran (a quick one)
            values["progress"] = progress.model_dump(mode="json")
        job = self._update(job_id, from_states, values, worker_id=worker_id)
        if job is None:
            raise self._refusal(job_id, state, worker_id)
        return self._announced(job)

    @property
    def _affinity(self) -> timedelta:
        return timedelta(seconds=self.affinity_s)

    def _lease_end(self, now: datetime) -> datetime:
        return now + timedelta(seconds=self.lease_s)

    def _record(self, conn: sa.Connection, row: sa.Row[Any], kind: JobEventKind | None = None) -> Job:
        """The job a written row holds, its change appended to the outbox in the same transaction."""
        job = _to_job(row)
        self._append_event(conn, kind or _STATE_EVENT[job.state], job)
        return job

    def _append_event(self, conn: sa.Connection, kind: JobEventKind, job: Job) -> None:
        """One outbox row, after the write that changed (and so locked) the job's row: the job's
        own rows follow its commit order; readers of every job read behind the outbox's fence."""
        write_event(conn, kind, job, self.origin)

    def _announced(self, job: Job, kind: JobEventKind | None = None) -> Job:
        """After commit: this process hears of the change at once, the outbox follower too."""
        if self._events is not None:
            self._events.publish(kind or _STATE_EVENT[job.state], job)
        for hook in self._commit_hooks:
            hook()
        return job

    def _announced_all(self, changes: builtins.list[tuple[JobEventKind, Job]]) -> None:
        """``_announced`` for the changes of one transaction: each published, the hooks called once."""
        if not changes:
            return
        if self._events is not None:
            for kind, job in changes:
                self._events.publish(kind, job)
        for hook in self._commit_hooks:
            hook()

    # -- cross-request batching (issue 17) -----------------------------------------------------

    _MATE_LOOKAHEAD = 16

    def claim_batch_mates(self, worker_id: str, *, batch_key: str, priority: int,
                          max_rows: int) -> builtins.list[Job]:
        """Queued jobs of ``priority`` and ``batch_key`` that fit in ``max_rows`` image rows together
        (a job's rows: ``batch_size * n_iter``), in claim order, claimed in one transaction: the
        mates a worker adds to a batch whose first job it holds (``worker.batching``). A job too
        large for the rows left is passed over and stays queued. Empty when none fits."""
        if max_rows < 1 or "\x00" in batch_key:
            return []
        now = _now()
        with self._tx(write=True) as conn:
            # Some candidates beyond max_rows: a job too large for the rows left does not hide the rest.
            params = {"priority": priority, "batch_key": batch_key, "limit": max_rows + self._MATE_LOOKAHEAD}
            seqs, rows = [], 0
            for candidate in conn.execute(queries.BATCH_CANDIDATES, params):
                need = self._request_rows(candidate.request)
                if rows + need <= max_rows:
                    seqs.append(candidate.seq)
                    rows += need
                if rows == max_rows:
                    break
            if not seqs:
                return []
            claimed_rows = conn.execute(
                queries.CLAIM_GROUP, {**self._claim_values(worker_id, now), "w_seqs": seqs}
            ).all()
            claimed = [_to_job(row) for row in sorted(claimed_rows, key=lambda r: (r.turn, r.seq))]
            write_events(conn, JobEventKind.STARTED, claimed, self.origin)
        for job in claimed:
            self._announced(job)
        return claimed

    @staticmethod
    def _request_rows(request: Any) -> int:
        """A stored request's image rows (``batch_size * n_iter``); unreadable: more than any batch."""
        try:
            return max(1, int(request.get("batch_size", 1)) * int(request.get("n_iter", 1)))
        except (AttributeError, TypeError, ValueError):
            return 1 << 30
