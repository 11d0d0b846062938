"""``Worker``: one thread that claims jobs and runs them on one engine (one worker per device).

    claim_next -> load request.image_refs() -> engine.generate(request, inputs, control)
               -> encode_png + ImageStore.put per image -> succeed | fail | cancelled

A job's request is a generation (the engine runs it) or a postprocess, A1111's extras (the worker's
``engine.extras.Postprocessor`` runs it, on the engine's device, one job at a time like the rest):
the API process submits extras as jobs and never loads an upscaler itself.

A job's failure is that job's alone: the loop logs it, records it, and claims the next. Out of
memory in the engine (CUDA or CPU) is such a failure too: memory is released and the next job runs.
A full disk never leaves a job running: a result that cannot be stored fails the job, and a
failure that cannot be written is retried until the disk takes it. A job database that refuses for
another reason (PostgreSQL restarting, a read-only file) changes no outcome: the worker records it
once the database takes it (nor does a failed read of a cancel request meanwhile fail the job, as a
failed progress write does not). Interrupt follows A1111: the job succeeds with the images
finished so far (``interrupted=True``); cancel leaves it cancelled with no result. The store
publishes every change to the ``JobEvents`` it was built with, so pass the worker the same
``JobEvents`` (it listens there for new submissions).

While jobs take milliseconds (the null engine, tiny models), the worker claims them in groups of
the same priority and model (``JobStore.claim_group``, one transaction for up to ``MAX_GROUP``),
which is where a queue of quick jobs spends its time; one slow job and it claims one at a time
again, so a job never waits long in a worker's hands while other workers idle. The ends of such a
group are recorded together too (``worker.outcomes.OutcomeRecorder``: one ``finish_many`` when the
group is done, or as soon as an end has waited ``OUTCOME_WINDOW_S``, so a quick job's end does not
wait for a slow one after it); a job claimed alone records its end at once.

On an engine that runs batches (``generate_batch``), a job joins compatible jobs (the same batch
key and priority) as rows of one engine call (``worker.batching``: how many, and how long to wait
for them). Each job of a batch keeps its own control, lease, progress, log, metrics and outcome, as
alone: a cancel or bad input ends that job only, and a batch that fails as a whole (out of memory)
runs again one job at a time.

A claim prefers the jobs of the models the engine holds loaded (``engine.loaded_models()``; the store
never lets that starve another job). The worker keeps its row in the worker registry while it runs
(``registration.Registration``: device, engine, loaded models, free memory, the job in hand).

A claim is a lease the worker renews while the job runs (``control.Heartbeats``). Between jobs, every
``lease_s / 2``, the worker also hands back jobs whose lease expired (whichever process held them):
a process that runs workers recovers dead workers' jobs, at start and while it runs.
"""

from __future__ import annotations

import itertools
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator, MutableMapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sdgate.core.engine import (
    Engine,
    EngineInputs,
    EngineJob,
    EngineOutput,
    loaded_models,
    preload,
    run_job,
)
from sdgate.core.errors import (
    Conflict,
    JobCancelled,
    NotFound,
    OutOfMemory,
    SdgateError,
    StorageFull,
    StorageUnavailable,
)
from sdgate.core.jobs import Job, JobEventKind, JobState, Outcome
from sdgate.core.requests import GraphRequest, PostprocessRequest
from sdgate.jobs.events import JobEvents
from sdgate.jobs.images import ImageStore
from sdgate.logs import log_context
from sdgate.metrics import Metrics
from sdgate.settings import Settings
from sdgate.worker.batching import BatchPolicy, detached, generation, run_together
from sdgate.worker.control import PROGRESS_INTERVAL_S, Heartbeats, JobControl, WorkerJobStore
from sdgate.worker.oom import release_memory
from sdgate.worker.outcomes import OutcomeRecorder
from sdgate.worker.registration import Registration
from sdgate.worker.results import build_result, load_inputs, store_images

if TYPE_CHECKING:
    from PIL.Image import Image

    from sdgate.engine.extras import Postprocessor

logger = logging.getLogger("sdgate.worker")

_numbers = itertools.count()
# Recording an outcome on a refusing disk is retried with a doubling wait, up to this.
STORAGE_RETRY_MAX_S = 10.0
# Jobs that run faster than this are claimed in groups (doubling up to MAX_GROUP per claim), so a
# claimed job waits at most about MAX_GROUP * QUICK_JOB_S in the worker's hands; one slower job
# brings the worker back to claiming one at a time.
QUICK_JOB_S = 0.05
MAX_GROUP = 16


class _JobLog(logging.LoggerAdapter[logging.Logger]):
    """Prefixes messages with the job id and adds ``job_id`` to the record for structured logs."""

    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, MutableMapping[str, Any]]:
        assert self.extra is not None
        kwargs["extra"] = {**kwargs.get("extra", {}), **self.extra}
        return f"job {self.extra['job_id']}: {msg}", kwargs


@dataclass
class _InHand:
    """One job the worker holds: its control handle, its log, and what its run gave."""

    job: Job
    control: JobControl
    log: _JobLog
    started: float = field(default_factory=time.perf_counter)
    generate_s: float = 0.0  # the engine call (a batch's whole call for each of its jobs)
    output: EngineOutput | None = None
    outcome: tuple[str, str | None] | None = None  # (state, error code) once recorded
    deferred: bool = False  # its end waits in the outcome recorder: released once recorded
    ended: float | None = None  # perf_counter when its end went to the recorder (its run time's end)


@dataclass(frozen=True)
class _End:
    """A job's end waiting in the outcome recorder: the single call that records it alone
    (``record(job_id, *args)``), which its ``Outcome`` in the group's record is made from."""

    run: _InHand
    record: Callable[..., Job]
    args: tuple[Any, ...]


class Worker:
    def __init__(
        self,
        store: WorkerJobStore,
        engine: Engine,
        images: ImageStore,
        events: JobEvents,
        settings: Settings,
        *,
        worker_id: str | None = None,
        progress_interval_s: float = PROGRESS_INTERVAL_S,
        postprocessor: Postprocessor | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.worker_id = worker_id or f"{socket.gethostname()}-{os.getpid()}-{next(_numbers)}"
        self._store = store
        self._engine = engine
        self._settings = settings
        self._postprocessor = postprocessor  # built at the first extras job when not given
        self._images = images
        self._events = events
        self._poll_s = settings.worker_poll_s
        self._lease_s = store.lease_s
        self._max_attempts = settings.job_max_attempts
        self._next_recovery = 0.0  # monotonic time of the next look for expired leases
        self._group_size = 1  # how many jobs the next claim asks for (see QUICK_JOB_S)
        self._claimed_at: float | None = None  # the monotonic time of the last claim (a control read)
        self._heartbeats = Heartbeats(self.worker_id, lease_s=self._lease_s)
        self._progress_interval_s = progress_interval_s
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._remove_listener: Callable[[], None] | None = None
        # The jobs in hand (several while a batch runs, or while a group's ends wait to be recorded),
        # replaced whole so other threads read a snapshot; changed under the lock (two threads release).
        self._in_hand: dict[str, JobControl] = {}
        self._in_hand_lock = threading.Lock()
        # A claimed group's ends, recorded together (``worker.outcomes``); used while ``_grouped``.
        self._outcomes: OutcomeRecorder[_End] = OutcomeRecorder(self._record_ends,
                                                                name=f"sdgate-{self.worker_id}-outcomes")
        self._grouped = False
        self._metrics = metrics
        self._batches = BatchPolicy(store, engine, settings, self.worker_id, wake=self._wake,
                                    stopping=self._stopping)
        device = getattr(engine, "device", None) or settings.device
        self._registration = Registration(store, engine, self.worker_id, device=str(device),
                                          current_job=lambda: self.current_job_id)

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError(f"worker {self.worker_id} already started")
        # A submission wakes it, nothing else: a worker node's outbox follower then reads no row.
        self._remove_listener = self._events.add_signal(JobEventKind.QUEUED, self._wake.set)
        self._registration.start()
        self._thread = threading.Thread(target=self._loop, name=f"sdgate-{self.worker_id}", daemon=True)
        self._thread.start()
        logger.info("worker %s: started (engine %s)", self.worker_id, self._engine.name)

    def stop(self, timeout: float | None = None) -> bool:
        """Finishes the job in hand, then stops. Returns False if that took longer than ``timeout``
        (the thread then stops on its own once the job is done)."""
        self._stopping.set()
        self._wake.set()
        if self._remove_listener is not None:
            self._remove_listener()
            self._remove_listener = None
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                logger.warning("worker %s: still running a job after %s s", self.worker_id, timeout)
                return False
        logger.info("worker %s: stopped", self.worker_id)
        return True

    @property
    def current_job_id(self) -> str | None:
        """The job in hand (a batch's first job while a batch runs)."""
        return next(iter(self._in_hand), None)

    @property
    def current_job_ids(self) -> tuple[str, ...]:
        """Every job in hand: one, or a batch's jobs."""
        return tuple(self._in_hand)

    def current_preview(self, job_id: str) -> Image | None:
        """The live preview of ``job_id`` if this worker runs it, alone or in a batch (A1111's
        ``current_image``); rendered on the caller's thread, only when asked for."""
        control = self._in_hand.get(job_id)
        return control.preview() if control is not None else None

    def run_once(self) -> bool:
        """Claims and runs one job, or a group of them while jobs are quick (``_group_size``);
        False when none was queued. A claimed group is run to its end, also when the worker is
        told to stop meanwhile (its jobs take milliseconds). A job that can share a batch runs in
        one with the compatible jobs ``worker.batching`` gathers for it."""
        self._wake.clear()  # before the claim: a submission after this point wakes the next wait
        models = loaded_models(self._engine)
        claimed_at = self._claimed_at = time.monotonic()
        if self._group_size <= 1:
            job = self._store.claim_next(self.worker_id, prefer_models=models)
            claimed = [job] if job is not None else []
        else:
            claimed = self._store.claim_group(self.worker_id, prefer_models=models, limit=self._group_size)
        if not claimed:
            return False
        # The ends of a group are recorded together (within OUTCOME_WINDOW_S, and all before this
        # returns); a job claimed alone records its end at once, as before.
        self._grouped = len(claimed) > 1
        try:
            while claimed:
                batch = self._batches.gather(claimed.pop(0), claimed, claimed_at)
                started = time.perf_counter()
                if len(batch) == 1:
                    self._run(batch[0])
                else:
                    self._run_batch(batch)
                quick = time.perf_counter() - started < QUICK_JOB_S
                self._group_size = min(self._group_size * 2, MAX_GROUP) if quick else 1
        finally:
            self._grouped = False
            self._outcomes.flush()
        return True

    def requeue_expired(self) -> None:
        """Hands back jobs whose worker's lease ran out (due every ``lease_s / 2``)."""
        now = time.monotonic()
        if now < self._next_recovery:
            return
        self._next_recovery = now + self._lease_s / 2
        requeued = self._store.requeue_expired(max_attempts=self._max_attempts)
        if requeued:
            logger.info("worker %s: re-queued %d job(s) whose lease expired", self.worker_id, len(requeued))

    def _loop(self) -> None:
        try:
            if self._settings.compile:
                self._preload()
            self._claim_and_run()
        finally:
            self._outcomes.stop()
            self._heartbeats.stop()
            self._registration.stop()  # once the job in hand is done: the row leaves with the worker

    def _preload(self) -> None:
        """``--compile``: the default model loaded, compiled and warmed up before the first claim
        (a failure is logged: the first job then loads it, eager if compiling failed)."""
        started = time.perf_counter()
        try:
            name = preload(self._engine, self._settings.model)
        except Exception as exc:
            logger.warning("worker %s: could not preload the default model: %s", self.worker_id, exc)
            return
        if name is not None:
            logger.info("worker %s: %s loaded and compiled in %.1f s", self.worker_id, name,
                        time.perf_counter() - started)
            self._registration.changed()

    def _claim_and_run(self) -> None:
        claim_fault: str | None = None  # logged once, not at every poll while the disk stays full
        while not self._stopping.is_set():
            try:
                self.requeue_expired()
                ran = self.run_once()
                claim_fault = None
                if ran:
                    continue
            except StorageUnavailable as exc:  # claiming writes too: wait for room
                if exc.message != claim_fault:
                    logger.warning("worker %s: cannot claim a job: %s", self.worker_id, exc.message)
                claim_fault = exc.message
            except Exception:  # the store is unreachable or locked: wait and try again
                logger.exception("worker %s: claiming a job failed", self.worker_id)
            self._wake.wait(self._poll_s)

    # -- one job -----------------------------------------------------------------------------

    def _run(self, job: Job) -> None:
        run = self._take(job)
        try:
            with self._job_context(run), self._heartbeats.beating(run.control):
                try:
                    # 1. decode the inputs the request refers to
                    inputs = load_inputs(self._images, job.request)
                    outcome: EngineOutput | BaseException = self._generate(run, inputs)  # 2. generate
                except Exception as exc:
                    outcome = detached(exc)
                self._settle(run, outcome)  # 3. store the images, 4. record the outcome
        finally:
            self._release(run)

    def _run_batch(self, jobs: list[Job]) -> None:
        """Runs compatible jobs as one engine call (``worker.batching``); each keeps its own control,
        lease, log and outcome, recorded as if it ran alone, and leaves the worker's hands then."""
        runs = [self._take(job) for job in jobs]
        try:
            with ExitStack() as leases:
                self._run_held(runs, {run.job.id: leases.enter_context(ExitStack()) for run in runs})
        finally:  # after an unexpected error, what is left in hand is left to its lease
            for run in runs:
                if run.job.id in self._in_hand and not run.deferred:
                    self._release(run)

    def _run_held(self, runs: list[_InHand], beats: dict[str, ExitStack]) -> None:
        ready: list[tuple[_InHand, EngineInputs]] = []
        for run in runs:  # 1. each job's inputs: a job whose inputs fail ends now, alone
            beats[run.job.id].enter_context(self._heartbeats.beating(run.control))
            with self._job_context(run):
                try:
                    ready.append((run, load_inputs(self._images, run.job.request)))
                    continue
                except Exception as exc:
                    self._settle(run, detached(exc))
            beats[run.job.id].close()
            self._release(run)
        # 2. Generate: one batch, or each job alone when the batch failed as a whole.
        started = time.perf_counter()
        engine_jobs = [EngineJob(generation(run.job), inputs, run.control) for run, inputs in ready]
        outcomes = run_together(self._engine, engine_jobs, self.worker_id,
                                alone=lambda i: self._generate(*ready[i]))
        batch_s = time.perf_counter() - started
        for (run, _), outcome in zip(ready, outcomes, strict=True):  # 3-4. store the images, record
            run.generate_s = run.generate_s or batch_s  # run alone, each job timed its own
            with self._job_context(run):
                self._settle(run, outcome)
            beats[run.job.id].close()  # its lease needs no keeping: nothing of it runs
            self._release(run)

    def _take(self, job: Job) -> _InHand:
        """The job is in hand: its control handle made, the registry told."""
        on_renew = (lambda: self._metrics.heartbeat(self.worker_id)) if self._metrics is not None else None
        control = JobControl(self._store, job.id, interval_s=self._progress_interval_s, on_renew=on_renew,
                             claimed_at=self._claimed_at if job.control is None else None)
        with self._in_hand_lock:
            self._in_hand = {**self._in_hand, job.id: control}
        self._registration.changed()
        run = _InHand(job, control, _JobLog(logger, {"job_id": job.id}))
        with self._job_context(run):
            run.log.info("started on %s (attempt %d)", self.worker_id, job.attempts)
        return run

    def _release(self, run: _InHand) -> None:
        """The job is out of hand (its outcome recorded, or left to the lease): counted in the metrics.
        A job whose end waits in the outcome recorder stays in hand until it is recorded."""
        if run.deferred:
            return
        with self._in_hand_lock:
            self._in_hand = {k: v for k, v in self._in_hand.items() if k != run.job.id}
        self._registration.changed()  # no job in hand; maybe another model loaded
        if self._metrics is None or run.outcome is None:
            return
        state, error = run.outcome
        output, job = run.output, run.job
        self._metrics.job_finished(
            state=state, error=error,
            model=output.model_name if output is not None else "",
            width=output.width if output is not None else 0,
            height=output.height if output is not None else 0,
            waited_s=_seconds_between(job.created_at, job.started_at) if job.started_at else None,
            ran_s=(run.ended or time.perf_counter()) - run.started, steps=run.control.steps_done,
            images=len(output.images) if output is not None and state == "succeeded" else 0,
            worker=self.worker_id,
        )

    @contextmanager
    def _job_context(self, run: _InHand) -> Iterator[None]:
        with log_context(job_id=run.job.id, worker_id=self.worker_id, dialect=run.job.dialect):
            yield

    def _generate(self, run: _InHand, inputs: EngineInputs) -> EngineOutput:
        """The job alone on the engine (or the postprocessor)."""
        request, control = run.job.request, run.control
        started = time.perf_counter()
        if isinstance(request, PostprocessRequest):
            output = self._get_postprocessor().run(request, inputs, control)
        elif isinstance(request, GraphRequest):  # a ComfyUI prompt: its nodes on the engine
            output = self._run_graph(request, inputs, control)
        else:
            output = run_job(self._engine, EngineJob(request, inputs, control))
        run.generate_s = time.perf_counter() - started
        return output

    def _settle(self, run: _InHand, outcome: EngineOutput | BaseException) -> None:
        """Records the job's outcome: its result with its images stored, or why it has none."""
        if isinstance(outcome, EngineOutput):
            run.output = outcome
            try:
                self._succeed(run, outcome)
                return
            except Exception as exc:
                outcome = detached(exc)
        log = run.log
        if isinstance(outcome, JobCancelled):
            log.info("cancelled")
            self._finish(run, self._store.cancelled)
        elif isinstance(outcome, OutOfMemory):
            release_memory()  # what the failed call held (its traceback is gone: see ``detached``)
            log.warning("failed: %s", outcome.message)
            self._finish(run, self._store.fail, outcome.to_dict())
        elif isinstance(outcome, SdgateError):
            log.warning("failed: %s: %s", outcome.code, outcome.message)
            self._finish(run, self._store.fail, outcome.to_dict())
        else:
            log.error("failed with an unexpected error", exc_info=outcome)
            error = {"code": "internal_error", "message": str(outcome) or type(outcome).__name__}
            self._finish(run, self._store.fail, error)

    def _succeed(self, run: _InHand, output: EngineOutput) -> None:
        job, control = run.job, run.control
        if control.cancelled or control.cancel_requested():
            raise JobCancelled(f"job {job.id} was cancelled")
        generated = time.perf_counter()
        with_infotext = not isinstance(job.request, PostprocessRequest)
        stored = store_images(self._images, output, with_infotext=with_infotext)
        timings = {
            **output.timings,
            "queued_s": _seconds_between(job.created_at, job.started_at),
            "generate_s": run.generate_s,
            "store_s": time.perf_counter() - generated,
        }
        result = build_result(job.request, output, stored, control, timings)
        self._finish(run, self._store.succeed, result)
        run.log.info("succeeded: %d image(s)%s", len(stored), " (interrupted)" if result.interrupted else "")

    def _finish(self, run: _InHand, record: Callable[..., Job], *args: Any) -> None:
        if run.control.lost:  # another worker may run it now: its outcome is theirs to record
            run.log.warning("stopped without recording an outcome: the lease was lost")
            return
        if self._grouped:  # recorded with the rest of the group's ends
            run.deferred, run.ended = True, time.perf_counter()
            self._outcomes.put(_End(run, record, args))
            return
        self._finish_alone(run, record, *args)

    def _outcome(self, run: _InHand, record: Callable[..., Job], args: tuple[Any, ...]) -> Outcome:
        """The ``Outcome`` of the single call ``record(job_id, *args)``."""
        progress = run.control.last_progress
        if record == self._store.succeed:
            return Outcome(run.job.id, JobState.SUCCEEDED, result=args[0], progress=progress, held=run.job)
        if record == self._store.fail:
            return Outcome(run.job.id, JobState.FAILED, error=args[0], progress=progress, held=run.job)
        if record == self._store.cancelled:
            result = args[0] if args else None
            return Outcome(run.job.id, JobState.CANCELLED, result=result, progress=progress, held=run.job)
        raise ValueError(f"not an outcome: {record!r}")

    def _record_ends(self, ends: list[_End]) -> None:
        """The outcome recorder's write: the ends of a group in one ``finish_many``; when that fails
        as a whole (nothing of it is recorded), each alone, as a job claimed alone records its end
        (a full disk fails it, an unreachable database is waited for)."""
        try:
            answers: list[Job | Conflict | NotFound] | None = self._store.finish_many(
                [self._outcome(end.run, end.record, end.args) for end in ends], worker_id=self.worker_id)
        except Exception as exc:
            logger.warning("worker %s: recording %d outcome(s) together failed (%s); recording each alone",
                           self.worker_id, len(ends), exc)
            answers = None
        for i, end in enumerate(ends):
            run = end.run
            try:
                with self._job_context(run):
                    if answers is None:
                        self._finish_alone(run, end.record, *end.args)
                    elif isinstance(answers[i], Job):
                        finished = answers[i]
                        run.outcome = (finished.state.value, _error_code(finished))
                    else:  # finished meanwhile, handed to another worker, or deleted: not ours
                        run.log.warning("could not record the outcome: %s", answers[i].message)
            finally:
                run.deferred = False
                self._release(run)

    def _finish_alone(self, run: _InHand, record: Callable[..., Job], *args: Any) -> None:
        log, job_id = run.log, run.job.id
        try:
            finished = record(job_id, *args, worker_id=self.worker_id, progress=run.control.last_progress)
            run.outcome = (finished.state.value, _error_code(finished))
            return
        except StorageFull as exc:
            fault = exc
        except StorageUnavailable as exc:  # the database is away, not full: the outcome stands
            log.warning("could not record the outcome yet: %s", exc.message)
            self._record_until_taken(run, record, *args)
            return
        except Conflict as exc:  # finished meanwhile, or handed to another worker: theirs to record
            log.warning("could not record the outcome: %s", exc.message)
            return
        except Exception:  # the loop goes on
            log.exception("could not record the outcome")
            return
        log.warning("could not record the outcome: %s", fault.message)
        self._record_until_taken(run, self._store.fail, fault.to_dict())

    def _record_until_taken(self, run: _InHand, record: Callable[..., Job], *args: Any) -> None:
        """Records the outcome, retrying while the store refuses, so the job is never left running.
        A worker told to stop gives up (the job's lease runs out and it runs again elsewhere)."""
        log, job_id = run.log, run.job.id
        delay = self._poll_s
        while True:
            try:
                finished = record(job_id, *args, worker_id=self.worker_id,
                                  progress=run.control.last_progress)
                run.outcome = (finished.state.value, _error_code(finished))
                if finished.error:
                    log.warning("failed: %s", finished.error.get("message"))
                return
            except (Conflict, NotFound):  # finished or deleted meanwhile: nothing left running
                return
            except Exception as exc:
                reason = exc.message if isinstance(exc, SdgateError) else repr(exc)
                if self._stopping.is_set():
                    log.error("stopping with the job still running: cannot record its outcome: %s", reason)
                    return
                log.warning("cannot record the outcome yet (%s); retrying in %.1f s", reason, delay)
            self._stopping.wait(delay)
            delay = min(delay * 2, STORAGE_RETRY_MAX_S)

    def _run_graph(self, request: GraphRequest, inputs: EngineInputs, control: JobControl) -> EngineOutput:
        """A graph on the engine: through the engine's own ``run_graph`` where it has one (the safety
        checker's wrapper checks every image it saves), else the graph executor."""
        own = getattr(type(self._engine), "run_graph", None)
        if callable(own):
            return own(self._engine, request, inputs, control)  # type: ignore[no-any-return]
        from sdgate.engine.comfy.executor import run_graph

        return run_graph(self._engine, request, inputs, control)

    def _get_postprocessor(self) -> Postprocessor:
        if self._postprocessor is None:
            from sdgate.core.models import ModelCatalog
            from sdgate.engine.extras import postprocessor_for

            catalog = getattr(self._engine, "catalog", None) or ModelCatalog(self._settings)
            self._postprocessor = postprocessor_for(self._engine, catalog)
        return self._postprocessor



def _error_code(job: Job) -> str | None:
    return str(job.error.get("code")) if job.error else None


def _seconds_between(start: datetime, end: datetime | None) -> float:
    return (end - start).total_seconds() if end is not None else 0.0
