"""``JobControl``: the ``GenerationControl`` the worker hands the engine for one job.

At every step it reads the job's pending control request (one indexed read; at the first step only
when the claim that found none is over ``CLAIM_FRESH_S`` old; once more after the engine returns
unless the last read, or that claim, is fresh), writes progress to the store (the first once the
job has run ``PROGRESS_FIRST_S``, then at most every ``interval_s``, and the last step once any was
written, each with an ETA; a progress write renews the job's lease), and keeps the step's preview
callable. A job that ends within ``PROGRESS_FIRST_S`` so writes no progress and reads no control
(its end records its last step): a queue of quick jobs pays for no round trip that tells nobody
anything.

``Heartbeats`` is the thread beside a worker's engine while jobs run: it renews each job's lease
(a step may run long), and stores each job's latest preview as a PNG about once a second,
so any process's ``/progress`` and event streams can show it. A lease found lost (the job was
handed to another worker) stops the job at its next step, and its outcome is not recorded.
"""

from __future__ import annotations

import io
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING

from sdgate.core.engine import StepAction, StepReport
from sdgate.core.jobs import ControlAction, JobStore, Progress

if TYPE_CHECKING:
    from PIL.Image import Image

logger = logging.getLogger("sdgate.worker")

PROGRESS_INTERVAL_S = 0.2
# A job's first progress is written once it has run this long: the outcome of a quicker job follows
# at once and says all a progress would (a queue of such jobs then pays for no write that informs
# nobody), while a job a person watches shows its first step within a glance.
PROGRESS_FIRST_S = 0.05
PREVIEW_INTERVAL_S = 1.0
# A control read this recent still holds when the engine returns.
CONTROL_FRESH_S = 0.05
# A claim that found no control request this recent stands for a read at the first step and, when
# no step read since, when the engine returns. A claim may take a group of quick jobs (each under
# 50 ms, see ``runner.QUICK_JOB_S``) that then run one after the other: a request made for one of
# them meanwhile is seen at its second step, and a job of one step that ends within this time of its
# claim runs to its end (as a request a moment after its end would find it ended).
CLAIM_FRESH_S = 0.25

_STEP_ACTIONS = {
    ControlAction.SKIP: StepAction.SKIP,
    ControlAction.INTERRUPT: StepAction.INTERRUPT,
    ControlAction.CANCEL: StepAction.CANCEL,
}


# What a worker needs of the store: the whole port (claims, leases, previews, outcomes).
WorkerJobStore = JobStore


class JobControl:
    def __init__(
        self,
        store: WorkerJobStore,
        job_id: str,
        *,
        interval_s: float = PROGRESS_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
        on_renew: Callable[[], None] | None = None,
        claimed_at: float | None = None,
    ) -> None:
        """``claimed_at``: the ``clock`` time of the claim that found the job with no control request
        pending: it stands as a control read (None: the first step reads)."""
        self.job_id = job_id
        self.steps_done = 0  # steps the engine reported (all iterations and passes)
        self._on_renew = on_renew  # after each renewed lease (the worker's heartbeat metric)
        self.interrupted = False
        self.cancelled = False
        self.lost = False  # the lease went to someone else: stop, record nothing
        self._store = store
        self._interval_s = interval_s
        self._clock = clock
        self._started = clock()  # when the job began to run here: its first progress is timed from it
        self._last_write: float | None = None
        self._last_report: StepReport | None = None  # the latest step's, written or not
        self._last_node: str | None = None  # the graph node of the last progress written
        self._claimed_at = claimed_at
        self._control_read_at: float | None = None  # the clock at the last successful control read
        self._step_read_at: float | None = None  # ... of those made at a step
        self._origin: tuple[float, float] | None = None  # (time, fraction) at the first step
        self._state_lock = threading.Lock()
        self._render_lock = threading.Lock()
        self._preview: Callable[[], Image] | None = None
        self._preview_key: tuple[int, int] | None = None
        self._rendered: tuple[tuple[int, int], Image] | None = None
        self._stored_key: tuple[int, int] | None = None

    def on_step(self, report: StepReport) -> StepAction:
        now = self._clock()
        self.steps_done += 1
        if report.preview is not None:
            with self._state_lock:
                self._preview = report.preview
                self._preview_key = (report.iteration, report.step)
        self._report_progress(report, now)
        return self._action()

    def on_cached(self, node_ids: Sequence[str]) -> None:
        """A graph job's nodes the executor will serve from its cache, told before the first node
        runs: written at once, as a progress of its own (ComfyUI sends ``execution_cached`` before
        any node executes); later progress does not repeat them."""
        self._write(Progress(cached=tuple(str(node_id) for node_id in node_ids)))

    def preview(self) -> Image | None:
        """The latest step's preview, rendered on the caller's thread and at most once per step."""
        with self._state_lock:
            render, key = self._preview, self._preview_key
        if render is None or key is None:
            return None
        with self._render_lock:
            if self._rendered is not None and self._rendered[0] == key:
                return self._rendered[1]
            try:
                image = render()
            except Exception:
                logger.warning("job %s: preview failed", self.job_id, exc_info=True)
                return None
            self._rendered = (key, image)
            return image

    def renew(self, worker_id: str) -> None:
        """Renews the lease; a lease found lost stops the job at its next step."""
        if not self._store.heartbeat(self.job_id, worker_id):
            if not self.lost:
                logger.warning("job %s: %s no longer holds its lease", self.job_id, worker_id)
            self.lost = True
        elif self._on_renew is not None:
            self._on_renew()

    def store_preview(self) -> None:
        """Writes the latest step's preview to the store, once per step."""
        with self._state_lock:
            key = self._preview_key
        if key is None or key == self._stored_key:
            return
        image = self.preview()
        if image is None:
            return
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        self._store.put_preview(self.job_id, buffer.getvalue(), iteration=key[0], step=key[1])
        self._stored_key = key

    def cancel_requested(self) -> bool:
        """A last look after the engine returned (an engine with no steps never asked, and a decode
        after the last step may take a while). A read at a step less than ``CONTROL_FRESH_S`` ago
        stands (with none, a claim less than ``CLAIM_FRESH_S`` ago): nothing ran since that a cancel
        could still save, and a round trip is spared."""
        if self.cancelled:
            return True
        now, read_at, claimed = self._clock(), self._step_read_at, self._claimed_at
        if read_at is not None and now - read_at < CONTROL_FRESH_S:
            return False
        if read_at is None and claimed is not None and now - claimed < CLAIM_FRESH_S:
            return False  # no step read: the claim's stands
        self.cancelled = self._pending() is ControlAction.CANCEL
        return self.cancelled

    @property
    def last_progress(self) -> Progress | None:
        """The latest step's progress, written or not: a job's end records it (a job quicker than
        ``PROGRESS_FIRST_S`` wrote none as it ran)."""
        report = self._last_report
        return None if report is None else _progress(report)

    def _report_progress(self, report: StepReport, now: float) -> None:
        self._last_report = report
        if self._origin is None:  # the rate is measured from the first step on (model loading aside)
            self._origin = (now, _progress(report).fraction)
        last = report.iteration >= report.iterations - 1 and report.step >= report.steps
        if self._last_write is None:
            due = now - self._started >= min(PROGRESS_FIRST_S, self._interval_s)
        else:
            due = now - self._last_write >= self._interval_s
        moved = report.node != self._last_node  # a graph's next node: always written (ComfyUI's executing)
        if not (due or moved or (last and self._last_write is not None)):
            return
        self._last_node = report.node
        progress = _progress(report)
        self._last_write = now
        self._write(progress.model_copy(update={"eta_s": self._eta(progress.fraction, now)}))

    def _write(self, progress: Progress) -> None:
        try:
            self._store.update_progress(self.job_id, progress)
        except Exception:  # progress is informative; a failed write must not fail the job
            logger.warning("job %s: progress update failed", self.job_id, exc_info=True)

    def _eta(self, fraction: float, now: float) -> float | None:
        assert self._origin is not None  # set at the first step
        start, start_fraction = self._origin
        if fraction <= start_fraction or now <= start:
            return None
        rate = (fraction - start_fraction) / (now - start)
        return max(0.0, (1.0 - fraction) / rate)

    def _action(self) -> StepAction:
        if self.lost:
            return StepAction.CANCEL
        claimed = self._claimed_at
        if self.steps_done == 1 and claimed is not None and self._clock() - claimed < CLAIM_FRESH_S:
            return StepAction.CONTINUE  # the claim just found no request: a later one is seen at step 2
        pending = self._pending()
        self._step_read_at = self._control_read_at
        if pending is None:
            return StepAction.CONTINUE
        if pending is ControlAction.SKIP:
            self._store.clear_control(self.job_id, ControlAction.SKIP)
        elif pending is ControlAction.INTERRUPT:
            self.interrupted = True
        else:
            self.cancelled = True
        return _STEP_ACTIONS[pending]

    def _pending(self) -> ControlAction | None:
        """The job's pending control request; None when the store cannot be read (the database
        restarting): like progress, a failed read must not fail the job, and a request made
        meanwhile is seen at the next step."""
        try:
            pending = self._store.pending_control(self.job_id)
            self._control_read_at = self._clock()
            return pending
        except Exception:
            logger.warning("job %s: reading its control request failed", self.job_id, exc_info=True)
            return None


def _progress(report: StepReport) -> Progress:
    return Progress(iteration=report.iteration, iterations=report.iterations, step=report.step,
                    steps=report.steps, node=report.node)


class Heartbeats:
    """The thread beside a worker's engine that keeps the leases and previews of its jobs in hand
    fresh (one per worker, not one per job: a queue of quick jobs starts no thread per job). A job
    is watched for the length of a ``with beating(control)`` block; no tick touches it after the
    block ends. The thread ends after a tick with no job in hand and starts again with the next."""

    def __init__(self, worker_id: str, *, lease_s: float, preview_interval_s: float = PREVIEW_INTERVAL_S
                 ) -> None:
        self._worker_id = worker_id
        # Three renewals per lease: one lost write (a busy database) does not lose the job.
        self._renew_s = lease_s / 3
        self._tick_s = min(self._renew_s, preview_interval_s)
        self._watched: dict[str, tuple[JobControl, list[float]]] = {}  # job id: (control, [renewed at])
        self._lock = threading.Lock()  # held by a tick while it works: a job leaves between ticks
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @contextmanager
    def beating(self, control: JobControl) -> Iterator[None]:
        with self._lock:
            self._watched[control.job_id] = (control, [time.monotonic()])
            if self._thread is None and not self._stop.is_set():
                self._thread = threading.Thread(target=self._loop, name=f"sdgate-heartbeat-{self._worker_id}",
                                                daemon=True)
                self._thread.start()
        try:
            yield
        finally:
            with self._lock:
                self._watched.pop(control.job_id, None)

    def stop(self) -> None:
        self._stop.set()
        with self._lock:
            thread = self._thread
        if thread is not None:
            thread.join()

    def _loop(self) -> None:
        while not self._stop.wait(self._tick_s):
            with self._lock:
                if not self._watched:
                    self._thread = None  # the next job starts another
                    return
                for control, renewed in list(self._watched.values()):
                    self._beat(control, renewed)

    def _beat(self, control: JobControl, renewed: list[float]) -> None:
        try:
            if time.monotonic() - renewed[0] >= self._renew_s:
                control.renew(self._worker_id)
                renewed[0] = time.monotonic()
            control.store_preview()
        except Exception:  # the next tick tries again; three misses lose the lease
            logger.warning("job %s: heartbeat failed", control.job_id, exc_info=True)
