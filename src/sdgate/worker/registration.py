"""``Registration``: a worker's row in the worker registry, kept true while the worker runs.

    registration = Registration(store, engine, worker_id, device="cuda:0", current_job=lambda: ...)
    registration.start()     # register_worker: host, pid, device, engine, loaded models, free memory
    registration.changed()   # a job started or ended: report soon (models may have changed too)
    registration.stop()      # remove_worker: a clean stop leaves the registry

A thread beside the worker reports every ``report_s`` (``worker_seen``) so the registry can tell a
live worker from a dead one by ``last_seen`` alone, and sooner when what it shows changed (the job
in hand, the loaded models), but never more often than every ``min_interval_s``: a worker running
hundreds of tiny jobs a second does not write its row hundreds of times. A row found gone (forgotten
while the database was unreachable) is registered again. The registry is informative: a database
that refuses a report is logged once per outage and never stops the worker.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime

from sdgate.core.engine import Engine, free_memory_bytes, loaded_models
from sdgate.core.jobs import JobStore, WorkerInfo

logger = logging.getLogger("sdgate.worker")

WORKER_REPORT_S = 5.0  # the registry's TTL (``jobs.workers.WORKER_TTL_S``) is three of these
MIN_REPORT_S = 1.0


class Registration:
    def __init__(
        self,
        store: JobStore,
        engine: Engine,
        worker_id: str,
        *,
        device: str | None,
        current_job: Callable[[], str | None],
        report_s: float = WORKER_REPORT_S,
        min_interval_s: float = MIN_REPORT_S,
    ) -> None:
        self._store = store
        self._engine = engine
        self._worker_id = worker_id
        self._device = device
        self._current_job = current_job
        self._report_s = report_s
        self._min_interval_s = min_interval_s
        self._started_at = datetime.now(UTC)
        self._nudge = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._failing = False

    def start(self) -> None:
        self._report(self._snapshot(), register=True)
        self._thread = threading.Thread(target=self._loop, name=f"sdgate-registry-{self._worker_id}",
                                        daemon=True)
        self._thread.start()

    def changed(self) -> None:
        self._nudge.set()

    def stop(self) -> None:
        if self._thread is None:
            return
        self._stopping.set()
        self._nudge.set()
        self._thread.join(10)
        self._thread = None
        try:
            self._store.remove_worker(self._worker_id)
        except Exception as exc:  # it goes stale, and is forgotten later
            logger.warning("worker %s: could not leave the worker registry: %s", self._worker_id, exc)

    def info(self) -> WorkerInfo:
        models, job = self._snapshot()
        return WorkerInfo(
            id=self._worker_id,
            host=socket.gethostname(),
            pid=os.getpid(),
            device=self._device,
            engine=self._engine.name,
            models=models,
            free_memory_bytes=free_memory_bytes(self._engine),
            current_job_id=job,
            started_at=self._started_at,
        )

    def _snapshot(self) -> tuple[tuple[str, ...], str | None]:
        """What a change of should be reported soon: the loaded models and the job in hand."""
        return tuple(loaded_models(self._engine)), self._current_job()

    def _loop(self) -> None:
        sent_at, sent = time.monotonic(), self._snapshot()
        while not self._stopping.is_set():
            self._nudge.wait(max(0.0, self._report_s - (time.monotonic() - sent_at)))
            self._nudge.clear()
            if self._stopping.is_set():
                return
            due = time.monotonic() - sent_at >= self._report_s
            if not due:
                if self._snapshot() == sent:
                    continue
                # A change: reported now, or once min_interval_s has passed since the last report.
                if self._stopping.wait(max(0.0, self._min_interval_s - (time.monotonic() - sent_at))):
                    return
            sent, sent_at = self._snapshot(), time.monotonic()
            self._report(sent)

    def _report(self, snapshot: tuple[tuple[str, ...], str | None], *, register: bool = False) -> None:
        models, job = snapshot
        try:
            seen = not register and self._store.worker_seen(
                self._worker_id, models=models, free_memory_bytes=free_memory_bytes(self._engine),
                current_job_id=job,
            )
            if not seen:
                self._store.register_worker(self.info())
        except Exception as exc:  # the next report tries again
            if not self._failing:
                logger.warning("worker %s: could not report to the worker registry: %s", self._worker_id, exc)
            self._failing = True
            return
        if self._failing:
            logger.info("worker %s: reporting to the worker registry again", self._worker_id)
        self._failing = False
