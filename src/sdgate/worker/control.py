"""``JobControl``: the ``GenerationControl`` the worker hands the engine for one job.

At every step it reads the job's pending control request (one indexed read), writes progress to
the store (throttled: the first step, the last, and at most every ``interval_s`` between, each with
an ETA), and keeps the step's preview callable so ``/progress`` can render it lazily.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from sdgate.core.engine import StepAction, StepReport
from sdgate.core.jobs import ControlAction, JobStore, Progress

if TYPE_CHECKING:
    from PIL.Image import Image

logger = logging.getLogger("sdgate.worker")

PROGRESS_INTERVAL_S = 0.2

_STEP_ACTIONS = {
    ControlAction.SKIP: StepAction.SKIP,
    ControlAction.INTERRUPT: StepAction.INTERRUPT,
    ControlAction.CANCEL: StepAction.CANCEL,
}


class WorkerJobStore(JobStore, Protocol):
    """What a worker needs beyond ``JobStore``: consuming a skip, which applies to one iteration."""

    def clear_control(self, job_id: str, action: ControlAction) -> None: ...


class JobControl:
    def __init__(
        self,
        store: WorkerJobStore,
        job_id: str,
        *,
        interval_s: float = PROGRESS_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.job_id = job_id
        self.interrupted = False
        self.cancelled = False
        self._store = store
        self._interval_s = interval_s
        self._clock = clock
        self._last_write: float | None = None
        self._origin: tuple[float, float] | None = None  # (time, fraction) at the first step
        self._state_lock = threading.Lock()
        self._render_lock = threading.Lock()
        self._preview: Callable[[], Image] | None = None
        self._preview_key: tuple[int, int] | None = None
        self._rendered: tuple[tuple[int, int], Image] | None = None

    def on_step(self, report: StepReport) -> StepAction:
        now = self._clock()
        if report.preview is not None:
            with self._state_lock:
                self._preview = report.preview
                self._preview_key = (report.iteration, report.step)
        self._report_progress(report, now)
        return self._action()

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

    def cancel_requested(self) -> bool:
        """A last look after the engine returned (an engine with no steps never asked)."""
        self.cancelled = self.cancelled or self._store.pending_control(self.job_id) is ControlAction.CANCEL
        return self.cancelled

    def _report_progress(self, report: StepReport, now: float) -> None:
        last = report.iteration >= report.iterations - 1 and report.step >= report.steps
        due = self._last_write is None or now - self._last_write >= self._interval_s
        if not (due or last):
            return
        progress = Progress(
            iteration=report.iteration, iterations=report.iterations, step=report.step, steps=report.steps
        )
        progress = progress.model_copy(update={"eta_s": self._eta(progress.fraction, now)})
        self._last_write = now
        try:
            self._store.update_progress(self.job_id, progress)
        except Exception:  # progress is informative; a failed write must not fail the job
            logger.warning("job %s: progress update failed", self.job_id, exc_info=True)

    def _eta(self, fraction: float, now: float) -> float | None:
        # Rate measured from the first step on, so model loading does not skew it.
        if self._origin is None:
            self._origin = (now, fraction)
            return None
        start, start_fraction = self._origin
        if fraction <= start_fraction or now <= start:
            return None
        rate = (fraction - start_fraction) / (now - start)
        return max(0.0, (1.0 - fraction) / rate)

    def _action(self) -> StepAction:
        pending = self._store.pending_control(self.job_id)
        if pending is None:
            return StepAction.CONTINUE
        if pending is ControlAction.SKIP:
            self._store.clear_control(self.job_id, ControlAction.SKIP)
        elif pending is ControlAction.INTERRUPT:
            self.interrupted = True
        else:
            self.cancelled = True
        return _STEP_ACTIONS[pending]
