"""Job types and the job-store contract shared by the server, the worker and the store backends.

A job is a durable row: queued -> running -> succeeded | failed | cancelled. The store is the only
source of truth; in-process event delivery (``JobEvents``) is an optimisation that a poll can
always replace, so API processes and workers may live on different machines.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict, Field

from sdgate.core.errors import Conflict, NotFound, StorageUnavailable
from sdgate.core.requests import GenerationRequest, GraphRequest, JobRequest, PostprocessRequest
from sdgate.core.results import GenerationResult


class JobState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)


class ControlAction(StrEnum):
    """What a client asked a job to do; the worker reads it at every step."""

    SKIP = "skip"
    INTERRUPT = "interrupt"
    CANCEL = "cancel"


class Progress(BaseModel):
    model_config = ConfigDict(frozen=True)

    iteration: int = 0  # 0-based
    iterations: int = 1
    step: int = 0  # steps done in this iteration
    steps: int = 0
    eta_s: float | None = None
    node: str | None = None  # a graph job's (ComfyUI) node running now
    # A graph job's nodes its executor serves from its cache, told before the first node runs
    # (ComfyUI's execution_cached); None: not told (not a graph job, or not yet).
    cached: tuple[str, ...] | None = None

    @property
    def fraction(self) -> float:
        if self.iterations <= 0 or self.steps <= 0:
            return 0.0
        return min(1.0, (self.iteration + self.step / self.steps) / self.iterations)


class Job(BaseModel):
    model_config = ConfigDict(frozen=True)

    id: str
    state: JobState
    request: JobRequest  # a generation, or a postprocess (A1111's extras)
    dialect: str = "native"
    owner: str | None = None
    priority: int = 0
    metadata: dict[str, Any] = Field(default_factory=dict)
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    attempts: int = 0
    worker_id: str | None = None
    control: ControlAction | None = None
    progress: Progress | None = None
    result: GenerationResult | None = None
    error: dict[str, str] | None = None


class JobEventKind(StrEnum):
    QUEUED = "queued"
    STARTED = "started"
    PROGRESS = "progress"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


class WorkerInfo(BaseModel):
    """A worker as the registry shows it: what it runs on, what it holds loaded, what it does now.
    ``last_seen`` and ``stale`` are the registry's (stale: no report within its TTL, a worker that
    probably died); the worker itself leaves them out."""

    model_config = ConfigDict(frozen=True)

    id: str
    host: str
    pid: int
    device: str | None = None
    engine: str | None = None
    models: tuple[str, ...] = ()  # names of the models it holds loaded
    free_memory_bytes: int | None = None  # on its device; None: the engine cannot tell
    current_job_id: str | None = None
    started_at: datetime
    last_seen: datetime | None = None
    stale: bool = False


@dataclass(frozen=True)
class Outcome:
    """One job's end for ``JobStore.finish_many``: ``state`` succeeded (with ``result``), failed
    (with ``error``) or cancelled (a ``result`` optional, as ``cancelled``). ``progress``: the
    job's last step, as the single calls take it. ``held``: the job as its worker claimed it; a
    store may build the finished job from it and the few columns that can change meanwhile instead
    of reading the whole row back (its request, metadata and creation are the claim's)."""

    job_id: str
    state: JobState
    result: GenerationResult | None = None
    error: dict[str, str] | None = None
    progress: Progress | None = None
    held: Job | None = None


@dataclass(frozen=True)
class Reservation:
    """Images of its owner's daily quota a submit reserved for the job, on a UTC day
    (``YYYY-MM-DD``): the store gives back the ones the job does not make when it ends."""

    images: int
    day: str


class JobStore(Protocol):
    """Durable jobs: the one port every process goes through (API nodes submit and read, workers
    claim with a lease, heartbeat and finish). Every method is synchronous and thread-safe; async
    callers use a thread. Implementations: ``jobs.store.SqlJobStore`` over SQLite or PostgreSQL,
    built by ``jobs.factory`` from a URL; tests may pass any object with these methods."""

    lease_s: float  # how long a claim holds a running job without a heartbeat

    # -- submitting and reading ---------------------------------------------------------------

    def submit(
        self,
        request: GenerationRequest | PostprocessRequest,
        *,
        dialect: str = "native",
        owner: str | None = None,
        priority: int = 0,
        metadata: dict[str, Any] | None = None,
        max_owner_jobs: int | None = None,
        idempotency_key: tuple[str, str] | None = None,
        reservation: Reservation | None = None,
    ) -> Job:
        """Raises ``QueueFull`` over the queue limit, ``TooManyJobs`` when ``owner`` already holds
        ``max_owner_jobs`` queued or running jobs; the job's ``queued`` event is in the same
        transaction as its row. ``reservation``: the images the caller's quota reserved for it,
        recorded with the job so that the ones it does not make go back when it ends."""
        ...

    def submit_many(
        self,
        requests: Sequence[GenerationRequest | PostprocessRequest | GraphRequest],
        *,
        dialect: str = "native",
        owner: str | None = None,
        priority: int = 0,
        metadata: dict[str, Any] | None = None,
        max_owner_jobs: int | None = None,
    ) -> list[Job]:
        """Several jobs of one caller in one transaction, in order, as ``submit`` one after the
        other would queue them; all or none (``QueueFull``, ``TooManyJobs``); no idempotency key."""
        ...

    def get(self, job_id: str) -> Job:
        """Raises ``NotFound``."""
        ...

    def list(
        self,
        *,
        states: tuple[JobState, ...] | None = None,
        dialect: str | None = None,
        owner: str | None = None,
        limit: int = 50,
    ) -> list[Job]:
        """Newest first."""
        ...

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
    ) -> tuple[list[Job], int | None]:
        """Newest first, for cursor pagination: the jobs and the cursor of the next page (or None)."""
        ...

    def position(self, job_id: str) -> int | None:
        """0 = next to run; None when not queued."""
        ...

    def queue_depth(self) -> int: ...

    def count_by_state(self) -> dict[str, int]:
        """Jobs in the store by state (every state, zeros included): the queue for ``/metrics``."""
        ...

    def delete(self, job_id: str) -> Job:
        """Removes a finished job (``Conflict`` while it is queued or running)."""
        ...

    # -- running: claims, leases, progress ----------------------------------------------------

    def claim_next(self, worker_id: str, *, prefer_models: Collection[str] = ()) -> Job | None:
        """Atomically move the first queued job (highest priority, then round-robin across owners,
        then FIFO) to running, leased to ``worker_id`` for ``lease_s``. ``prefer_models`` (the
        worker's loaded models): among the jobs of the highest priority, one naming such a model
        goes first, but a job queued longer than the store's affinity window is never passed over."""
        ...

    def claim_group(
        self, worker_id: str, *, prefer_models: Collection[str] = (), limit: int = 1, batched: bool = False
    ) -> list[Job]:
        """Up to ``limit`` jobs claimed in one transaction: the one ``claim_next`` would take, then
        queued jobs of the same priority and model (``batched``: of the same priority and batch key,
        ``core.batching``; none for a pick without a key), in claim order; each running and leased
        to ``worker_id``. Empty when none is queued."""
        ...

    def claim_batch_mates(self, worker_id: str, *, batch_key: str, priority: int, max_rows: int) -> list[Job]:
        """Queued jobs of ``priority`` and ``batch_key`` fitting ``max_rows`` image rows together
        (``batch_size * n_iter`` each), in claim order, claimed in one transaction: mates that join
        a batch a worker already holds. Empty when none fits."""
        ...

    def heartbeat(self, job_id: str, worker_id: str) -> bool:
        """Renews the lease; False when ``worker_id`` no longer holds the job (stop working on it)."""
        ...

    def requeue_expired(self, *, max_attempts: int) -> list[str]:
        """Jobs whose lease expired go back to queued (or fail once started ``max_attempts``
        times); never a job whose worker still heartbeats. Returns the ids re-queued."""
        ...

    def update_progress(self, job_id: str, progress: Progress) -> None: ...

    def put_preview(self, job_id: str, png: bytes, *, iteration: int, step: int) -> None:
        """The running job's latest preview, readable by every process (``preview``)."""
        ...

    def preview(self, job_id: str) -> bytes | None: ...

    def request_control(self, job_id: str, action: ControlAction) -> Job:
        """Cancel of a queued job makes it cancelled at once; otherwise the worker sees the flag."""
        ...

    def pending_control(self, job_id: str) -> ControlAction | None: ...

    def clear_control(self, job_id: str, action: ControlAction) -> None:
        """Forget a consumed one-shot request (a skip applies to one iteration only)."""
        ...

    # -- finishing: exactly one terminal state per job -----------------------------------------

    # The ends: ``progress``, the job's last step, is written with its end (a job quicker than the
    # worker's progress interval wrote none while it ran).

    def succeed(self, job_id: str, result: GenerationResult, *, worker_id: str | None = None,
                progress: Progress | None = None) -> Job: ...

    def fail(self, job_id: str, error: dict[str, str], *, worker_id: str | None = None,
             progress: Progress | None = None) -> Job: ...

    def cancelled(
        self, job_id: str, result: GenerationResult | None = None, *, worker_id: str | None = None,
        progress: Progress | None = None,
    ) -> Job: ...

    def finish_many(self, outcomes: Sequence[Outcome], *, worker_id: str) -> list[Job | Conflict | NotFound]:
        """The outcomes of jobs ``worker_id`` holds, recorded in one transaction as ``succeed`` /
        ``fail`` / ``cancelled`` each would; per outcome, in order, the finished job or the error
        that job's single call would raise (the others are still recorded). A store that cannot be
        written raises, as the single calls do, and records none."""
        ...

    # -- the worker registry: who runs, where, with which models -----------------------------------

    def register_worker(self, info: WorkerInfo) -> None:
        """Adds (or replaces) ``info.id``'s row, seen now; a worker calls it at start."""
        ...

    def worker_seen(
        self,
        worker_id: str,
        *,
        models: Collection[str],
        free_memory_bytes: int | None,
        current_job_id: str | None,
    ) -> bool:
        """The worker's periodic report; False when its row is gone (it registers again)."""
        ...

    def remove_worker(self, worker_id: str) -> None:
        """A worker that stops cleanly leaves the registry."""
        ...

    def list_workers(self) -> list[WorkerInfo]:
        """Every registered worker, stale ones marked, oldest first."""
        ...

    # -- health --------------------------------------------------------------------------------

    @property
    def storage_fault(self) -> StorageUnavailable | None:
        """Why the last write was refused (disk full, read-only), until one succeeds again."""
        ...

    def probe_write(self) -> None:
        """One small real write; raises ``StorageUnavailable`` while writes are refused."""
        ...

    def close(self) -> None: ...
