"""The process ``test_worker_crash`` kills: an embedded store + worker over a slow fake engine.

    python -m tests.worker.crash_child DATA_DIR MARKS_DIR serve   # run until killed
    python -m tests.worker.crash_child DATA_DIR MARKS_DIR drain   # run until nothing is left, exit 0

Both start as ``sdgate serve`` does, with a short lease: the worker re-queues a job whose lease
expired (its process was killed) at start and while it runs, then claims the queue.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from sdgate.core.jobs import JobState
from sdgate.jobs.events import JobEvents
from sdgate.jobs.images import LocalImageStore
from sdgate.jobs.store import SqlJobStore
from sdgate.settings import Settings
from sdgate.worker.runner import Worker
from tests.fakes import FakeEngine

STEPS = 10
STEP_S = 0.03
LEASE_S = 1.0


def main(data_dir: Path, marks_dir: Path, mode: str) -> None:
    settings = Settings(data_dir=data_dir, worker_poll_s=0.02, job_lease_s=LEASE_S)
    events = JobEvents()
    store = SqlJobStore(settings.database_url, events=events, lease_s=settings.job_lease_s)
    worker = Worker(
        store,
        FakeEngine(steps=STEPS, step_s=STEP_S, done_dir=marks_dir),
        LocalImageStore(settings.images_dir),
        events,
        settings,
        worker_id=f"{mode}-{os.getpid()}",
        progress_interval_s=0,  # every step, so the test can kill mid-job
    )
    worker.start()
    if mode == "serve":
        while True:
            time.sleep(1)
    while store.list(states=(JobState.QUEUED, JobState.RUNNING), limit=1):
        time.sleep(0.02)
    worker.stop(timeout=10)
    store.close()


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3])
