"""Job types and the job-store contract shared by the server, the worker and the store backends.

A job is a durable row: queued -> running -> succeeded | failed | cancelled. The store is the only
source of truth; in-process event delivery (``JobEvents``) is an optimisation that a poll can
always replace, so API processes and workers may live on different machines.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict, Field

from sdgate.core.requests import GenerationRequest
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

    @property
    def fraction(self) -> float:
        if self.iterations <= 0 or self.steps <= 0:
            return 0.0
        return min(1.0, (self.iteration + self.step / self.steps) / self.iterations)


class Job(BaseModel):
    model_config = ConfigDict(frozen=True)

    id: str
    state: JobState
    request: GenerationRequest
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


class JobStore(Protocol):
    """Durable jobs. Every method is synchronous and thread-safe; async callers use a thread."""

    def submit(
        self,
        request: GenerationRequest,
        *,
        dialect: str = "native",
        owner: str | None = None,
        priority: int = 0,
        metadata: dict[str, Any] | None = None,
        max_owner_jobs: int | None = None,
    ) -> Job: ...

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

    def position(self, job_id: str) -> int | None:
        """0 = next to run; None when not queued."""
        ...

    def queue_depth(self) -> int: ...

    def claim_next(self, worker_id: str) -> Job | None:
        """Atomically move the first queued job (highest priority, then FIFO) to running."""
        ...

    def update_progress(self, job_id: str, progress: Progress) -> None: ...

    def request_control(self, job_id: str, action: ControlAction) -> Job:
        """Cancel of a queued job makes it cancelled at once; otherwise the worker sees the flag."""
        ...

    def pending_control(self, job_id: str) -> ControlAction | None: ...

    def clear_control(self, job_id: str, action: ControlAction) -> None:
        """Forget a consumed one-shot request (a skip applies to one iteration only)."""
        ...

    def succeed(self, job_id: str, result: GenerationResult) -> Job: ...

    def fail(self, job_id: str, error: dict[str, str]) -> Job: ...

    def cancelled(self, job_id: str, result: GenerationResult | None = None) -> Job: ...

    def recover(self, *, max_attempts: int) -> list[str]:
        """At start-up: jobs left running by a dead process go back to queued (or fail when they
        used up ``max_attempts``). Returns the ids re-queued."""
        ...
