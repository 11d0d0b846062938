"""Cross-request batching in the worker (issue 17): which claimed jobs run as one engine batch.

    head claimed -> B = batch_rows(engine, head.request), at most batch_max (image rows)
                 -> mates: compatible jobs already in hand, then claim_batch_mates(key, priority, rows left)
                 -> fewer than B rows: wait for submissions until batch_wait_ms after the head's claim
                 -> core.engine.run_batch(engine, jobs): per job its output or its own exception

Jobs are compatible when they share a batch key (``core.batching.batch_key``: model, size, steps,
sampler, LoRAs, ...) and a priority; a job with no key (img2img, hires fix, ...) always runs alone.
A job's rows are its images (``batch_size * n_iter``); a batch never holds more than B of them, and a
head that fills B alone runs alone. The wait is short (15 ms by default) and counted from the
head's claim, so a lone job is delayed by that at most; every submission meanwhile wakes the policy
to claim it if it fits.

Batching is on where the engine can run a batch (``generate_batch``) and ``batch_max`` is not 1;
otherwise ``gather`` returns the head alone and the worker behaves as without batching. Claiming
mates never fails the head: a store that refuses the claim leaves the batch as it is.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence

from sdgate.core.batching import batch_key
from sdgate.core.engine import Engine, EngineJob, EngineOutput, batch_rows, run_batch
from sdgate.core.errors import OutOfMemory
from sdgate.core.jobs import Job
from sdgate.core.requests import GenerationRequest
from sdgate.settings import Settings
from sdgate.worker.control import WorkerJobStore
from sdgate.worker.oom import is_out_of_memory, out_of_memory_error, release_memory

logger = logging.getLogger("sdgate.worker")


class BatchPolicy:
    """Gathers the jobs that run in one batch with a claimed head (see the module doc)."""

    def __init__(self, store: WorkerJobStore, engine: Engine, settings: Settings, worker_id: str, *,
                 wake: threading.Event, stopping: threading.Event) -> None:
        self._store = store
        self._engine = engine
        self._worker_id = worker_id
        self._max_rows = settings.batch_max  # None: as many as the engine says
        self._wait_s = settings.batch_wait_ms / 1000.0
        self._wake = wake  # set by every submission
        self._stopping = stopping
        self.enabled = settings.batch_max != 1 and callable(getattr(engine, "generate_batch", None))

    def rows_for(self, request: GenerationRequest) -> int:
        """B: the image rows one batch of ``request``'s shape may hold now."""
        rows = batch_rows(self._engine, request)
        return min(rows, self._max_rows) if self._max_rows is not None else rows

    def gather(self, head: Job, held: list[Job], claimed_at: float) -> list[Job]:
        """``head`` and the jobs that run in one batch with it, head first: compatible jobs of
        ``held`` (jobs this worker claimed with it; those taken are removed from the list), then
        queued ones it claims, waiting for submissions until ``batch_wait_ms`` after ``claimed_at``
        (``time.monotonic``) while rows are left. ``[head]`` when it runs alone. Never raises: an
        error (the engine cannot say B, the store refuses a claim) leaves the batch as it stands,
        and every job claimed for it runs."""
        batch = [head]
        if not self.enabled or not isinstance(head.request, GenerationRequest):
            return batch
        try:
            self._fill(batch, held, claimed_at)
        except Exception:
            logger.warning("worker %s: gathering a batch for job %s failed; running %d job(s)",
                           self._worker_id, head.id, len(batch), exc_info=True)
        return batch

    def _fill(self, batch: list[Job], held: list[Job], claimed_at: float) -> None:
        head = batch[0]
        assert isinstance(head.request, GenerationRequest)
        rows, budget = job_rows(head), self.rows_for(head.request)
        if rows >= budget:  # full alone (or B is 1 now): no key to work out
            return
        key = batch_key(head.request)
        if key is None:
            return
        for job in [job for job in held if job.priority == head.priority]:
            need = job_rows(job)
            if rows + need <= budget and batch_key(job.request) == key:
                held.remove(job)
                batch.append(job)
                rows += need
        deadline = claimed_at + self._wait_s
        while rows < budget:
            self._wake.clear()  # before the claim: a submission after it ends the wait below
            mates = self._store.claim_batch_mates(self._worker_id, batch_key=key, priority=head.priority,
                                                  max_rows=budget - rows)
            if mates:
                batch.extend(mates)
                rows += sum(job_rows(job) for job in mates)
                continue
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self._stopping.is_set():
                return
            self._wake.wait(remaining)


def job_rows(job: Job) -> int:
    """The image rows ``job`` brings to a batch (``batch_size * n_iter``)."""
    return max(1, job.request.image_count) if isinstance(job.request, GenerationRequest) else 1


def generation(job: Job) -> GenerationRequest:
    """A batched job's request (``core.batching`` gives a key to generations alone)."""
    if not isinstance(job.request, GenerationRequest):
        raise TypeError(f"job {job.id} is not a generation and cannot run in a batch")
    return job.request


def run_together(engine: Engine, jobs: Sequence[EngineJob], worker_id: str, *,
                 alone: Callable[[int], EngineOutput]) -> list[EngineOutput | BaseException]:
    """Per job of ``jobs``, in order, its output or the exception that failed it alone: one engine
    call (``core.engine.run_batch``), or, when that call fails as a whole (out of memory for the
    whole batch; an engine error), memory released and each job run again alone
    (``alone(index)``), so no job fails for its mates' sake."""
    if not jobs:
        return []
    logger.info("worker %s: running %d job(s) as one batch", worker_id, len(jobs))
    failure: str | None = None
    try:
        outcomes = [detached(o) if isinstance(o, BaseException) else o for o in run_batch(engine, jobs)]
        if len(outcomes) != len(jobs):
            raise RuntimeError(f"the engine returned {len(outcomes)} outcome(s) for {len(jobs)} job(s)")
    except Exception as exc:
        failure = f"{type(exc).__name__}: {exc}"
    if failure is None:
        return outcomes
    # Out of the except block: its traceback no longer pins the tensors being freed.
    release_memory()
    logger.warning("worker %s: the batch failed (%s); running its %d job(s) one at a time",
                   worker_id, failure, len(jobs))
    results: list[EngineOutput | BaseException] = []
    for index in range(len(jobs)):
        try:
            results.append(alone(index))
        except Exception as exc:
            results.append(detached(exc))
    return results


def detached(exc: BaseException) -> BaseException:
    """``exc``, or for out of memory an ``OutOfMemory`` that holds no traceback: kept past the
    ``except`` block, the original would pin the tensors of the call that failed."""
    if is_out_of_memory(exc) and not isinstance(exc, OutOfMemory):
        return out_of_memory_error(exc)
    return exc
