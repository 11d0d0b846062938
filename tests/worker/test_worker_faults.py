"""Faults inside one job that must not take the worker down: out of memory in the engine (a real
CPU allocation failure, Python's MemoryError, CUDA's error), and a disk that refuses the result."""

from __future__ import annotations

import errno
import os
import time
import weakref
from collections.abc import Callable

import pytest
import torch

from sdgate.core.engine import EngineInputs, EngineOutput, GenerationControl
from sdgate.core.jobs import JobState
from sdgate.core.requests import GenerationRequest
from sdgate.jobs.store import SqlJobStore
from sdgate.worker.runner import Worker
from tests.fakes import FakeEngine
from tests.jobs.faults import DiskFull
from tests.worker.test_worker_runner import finished, held, wait_for_state

MakeWorker = Callable[..., Worker]


class GreedyEngine(FakeEngine):
    """Runs out of memory on the prompts "cpu", "python" and "cuda"; otherwise a ``FakeEngine``.
    ``held_tensors`` lets a test see whether what the failed job allocated was given back."""

    def __init__(self) -> None:
        super().__init__()
        self.held_tensors: list[weakref.ref[torch.Tensor]] = []

    def generate(
        self, request: GenerationRequest, inputs: EngineInputs, control: GenerationControl
    ) -> EngineOutput:
        if request.prompt not in ("cpu", "python", "cuda"):
            return super().generate(request, inputs, control)
        working = torch.ones(256, 1024)  # what the job holds when it fails
        self.held_tensors.append(weakref.ref(working))
        if request.prompt == "cpu":  # the real allocator's error: far more than any machine has
            torch.empty(1 << 52, dtype=torch.uint8)
        if request.prompt == "python":
            raise MemoryError()
        # No GPU here: CUDA's own error class, with the message its allocator writes.
        raise torch.cuda.OutOfMemoryError(
            "CUDA out of memory. Tried to allocate 20.00 GiB. GPU 0 has a total capacity of 7.79 GiB"
        )


@pytest.mark.parametrize(
    ("prompt", "said"),
    [
        ("cpu", "DefaultCPUAllocator: can't allocate memory"),
        ("python", "MemoryError"),
        ("cuda", "CUDA out of memory. Tried to allocate 20.00 GiB"),
    ],
)
def test_out_of_memory_fails_the_job_and_the_next_one_runs(
    store: SqlJobStore, make_worker: MakeWorker, prompt: str, said: str
) -> None:
    engine = GreedyEngine()
    worker = make_worker(engine)
    greedy = store.submit(GenerationRequest(prompt=prompt))
    after = store.submit(GenerationRequest(prompt="fine"))

    failed = finished(store, greedy.id)
    assert failed.state is JobState.FAILED and failed.error is not None
    assert failed.error["code"] == "out_of_memory"
    message = failed.error["message"]
    assert message.startswith("out of memory: ") and said in message
    assert message.endswith("try a smaller size or batch") and "enforce fail" not in message
    assert finished(store, after.id).state is JobState.SUCCEEDED
    assert worker._thread is not None and worker._thread.is_alive()
    assert [ref() for ref in engine.held_tensors] == [None]  # released, not pinned by the traceback


def test_a_full_image_disk_fails_the_job_and_the_next_one_runs(
    store: SqlJobStore, make_worker: MakeWorker, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = FakeEngine(hold_at=(0, 1))
    make_worker(engine)
    job = store.submit(GenerationRequest(prompt="full"))
    held(engine)
    real_fsync = os.fsync

    def no_space(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", no_space)
    engine.release.set()
    failed = finished(store, job.id)
    assert failed.state is JobState.FAILED and failed.error is not None
    assert failed.error == {
        "code": "storage_full",
        "message": "storage full: could not write an image (No space left on device)",
    }

    monkeypatch.setattr(os, "fsync", real_fsync)
    assert finished(store, store.submit(GenerationRequest(prompt="room")).id).state is JobState.SUCCEEDED


def test_a_result_the_database_cannot_take_fails_the_job_once_space_returns(
    store: SqlJobStore, make_worker: MakeWorker
) -> None:
    disk = DiskFull(store.database)
    engine = FakeEngine(hold_at=(0, 1))
    make_worker(engine)
    job = store.submit(GenerationRequest(prompt="full"))
    held(engine)

    # 1. The disk fills while the job runs: neither its result nor its failure can be written.
    disk.on = True
    engine.release.set()
    time.sleep(0.6)  # the worker keeps trying to record the failure
    assert store.get(job.id).state is JobState.RUNNING
    assert store.storage_fault is not None and store.storage_fault.code == "storage_full"

    # 2. Space returns: the job is failed (not left running), and the worker serves the next one.
    disk.on = False
    failed = wait_for_state(store, job.id, JobState.FAILED, timeout=15)
    assert failed.error == {
        "code": "storage_full",
        "message": "storage full: could not write the job database (database or disk is full)",
    }
    assert finished(store, store.submit(GenerationRequest(prompt="room")).id).state is JobState.SUCCEEDED
    assert store.storage_fault is None


def test_a_database_away_when_the_job_ends_takes_its_success_once_back(
    store: SqlJobStore, make_worker: MakeWorker
) -> None:
    """Not full: unreachable or failing for a while (PostgreSQL restarting; here a failing disk). The
    job's outcome stands: it is recorded once the database takes writes again, not turned into a
    failure."""
    disk = DiskFull(store.database, message="disk I/O error")
    engine = FakeEngine(hold_at=(0, 1))
    make_worker(engine)
    job = store.submit(GenerationRequest(prompt="away"))
    held(engine)

    disk.on = True
    engine.release.set()
    time.sleep(0.6)  # the worker keeps trying to record the success
    assert store.get(job.id).state is JobState.RUNNING

    disk.on = False
    done = wait_for_state(store, job.id, JobState.SUCCEEDED, JobState.FAILED, timeout=15)
    assert done.state is JobState.SUCCEEDED, done.error
    assert done.result is not None and len(done.result.images) == 1
