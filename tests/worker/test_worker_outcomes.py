"""Group commit of a worker's outcomes (``worker.outcomes``): the ends of a claimed group are
recorded together (``finish_many``), none waits long behind a slow job, a failed group record
falls back to each end alone, and ``OutcomeRecorder`` itself (order, window, stop, errors)."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import Any

from sdgate.core.errors import Conflict, NotFound, StorageUnavailable
from sdgate.core.jobs import Job, JobState, Outcome
from sdgate.core.requests import GenerationRequest
from sdgate.jobs.events import JobEvents
from sdgate.jobs.images import LocalImageStore
from sdgate.jobs.store import SqlJobStore
from sdgate.metrics import Metrics
from sdgate.worker.outcomes import OutcomeRecorder
from sdgate.worker.runner import Worker
from tests.fakes import FakeEngine
from tests.worker.test_worker_runner import finished, held, wait_for_state


class RecordingStore:
    """The store, with every outcome call counted; ``fail_groups`` of the first ``finish_many``
    calls raise as an unreachable database does (nothing recorded)."""

    def __init__(self, store: SqlJobStore, *, fail_groups: int = 0) -> None:
        self._store = store
        self.groups: list[int] = []  # the size of each finish_many that recorded
        self.alone: list[str] = []  # the jobs whose end was recorded by a single call
        self.fail_groups = fail_groups
        self.lock = threading.Lock()

    def finish_many(self, outcomes: Sequence[Outcome], *, worker_id: str) -> list[Job | Conflict | NotFound]:
        with self.lock:
            if self.fail_groups:
                self.fail_groups -= 1
                raise StorageUnavailable("storage unavailable: the test's database is away")
            self.groups.append(len(outcomes))
        return self._store.finish_many(outcomes, worker_id=worker_id)

    def succeed(self, job_id: str, *args: Any, **kwargs: Any) -> Job:
        with self.lock:
            self.alone.append(job_id)
        return self._store.succeed(job_id, *args, **kwargs)

    def __getattr__(self, name: str) -> object:
        return getattr(self._store, name)


def _worker(store: RecordingStore, engine: FakeEngine, images: LocalImageStore, events: JobEvents,
            settings: object) -> Worker:
    worker = Worker(store, engine, images, events, settings)  # type: ignore[arg-type]
    worker.start()
    return worker


def test_a_group_of_quick_jobs_records_its_ends_together(
    store: SqlJobStore, images: LocalImageStore, events: JobEvents, settings: object
) -> None:
    recording = RecordingStore(store)
    ids = [store.submit(GenerationRequest(prompt=f"quick {i}", steps=2)).id for i in range(30)]
    worker = _worker(recording, FakeEngine(size=8), images, events, settings)
    try:
        jobs = [finished(store, job_id) for job_id in ids]
    finally:
        assert worker.stop(timeout=10)
    assert all(job.state is JobState.SUCCEEDED and job.attempts == 1 for job in jobs)
    # Every job's result, and its last step although none was written while it ran.
    assert all(job.result is not None and len(job.result.images) == 1 for job in jobs)
    assert all(job.progress is not None and job.progress.step == 2 for job in jobs)
    assert max(recording.groups) > 1  # together, not one statement per job
    assert sum(recording.groups) + len(recording.alone) == len(ids)
    assert len(recording.alone) < len(ids) // 2
    assert worker.current_job_ids == ()  # every end recorded, every job out of hand


def test_an_end_does_not_wait_for_a_slow_job_of_its_group(
    store: SqlJobStore, images: LocalImageStore, events: JobEvents, settings: object
) -> None:
    """The worker claims ``[q1]``, then ``[q2, slow]`` (q1 was quick): q2's end is recorded within
    the recorder's window while ``slow`` still runs, not once the group is done."""
    recording = RecordingStore(store)
    q1, q2 = (store.submit(GenerationRequest(prompt=f"quick {i}", steps=1)).id for i in range(2))
    slow = store.submit(GenerationRequest(prompt="held", steps=2)).id
    engine = FakeEngine(size=8, hold_at=(0, 2))  # only the two-step job reaches step 2, and waits there
    worker = _worker(recording, engine, images, events, settings)
    try:
        held(engine)
        assert wait_for_state(store, q2, JobState.SUCCEEDED, timeout=5).result is not None
        assert store.get(slow).state is JobState.RUNNING and engine.held.is_set()
        assert worker.current_job_ids == (slow,)  # q2 left the worker's hands once recorded
        engine.release.set()
        assert finished(store, slow).state is JobState.SUCCEEDED
    finally:
        engine.release.set()
        assert worker.stop(timeout=10)
    assert store.get(q1).state is JobState.SUCCEEDED
    assert recording.groups[:1] == [1] and recording.alone == [q1]  # q1 alone; q2 by the recorder


def test_a_group_record_that_fails_records_each_end_alone(
    store: SqlJobStore, images: LocalImageStore, events: JobEvents, settings: object
) -> None:
    recording = RecordingStore(store, fail_groups=1)
    ids = [store.submit(GenerationRequest(prompt=f"quick {i}", steps=1)).id for i in range(6)]
    worker = _worker(recording, FakeEngine(size=8), images, events, settings)
    try:
        assert all(finished(store, job_id).state is JobState.SUCCEEDED for job_id in ids)
    finally:
        assert worker.stop(timeout=10)
    assert recording.fail_groups == 0  # the failing record was tried
    assert sum(recording.groups) + len(recording.alone) == len(ids)  # and nothing recorded twice
    assert len(recording.alone) >= 2  # the failed group's ends, each by its single call (and q1)


def test_the_recorder_writes_in_order_on_flush_and_after_its_window() -> None:
    writes: list[list[int]] = []
    written = threading.Event()

    def write(items: list[int]) -> None:
        writes.append(items)
        written.set()

    patient = OutcomeRecorder(write, window_s=60)
    for i in range(3):
        patient.put(i)
    assert patient.waiting == 3 and writes == []  # the window is a minute: nothing yet
    patient.flush()
    assert writes == [[0, 1, 2]] and patient.waiting == 0
    patient.put(3)
    patient.stop()  # writes what waits
    assert writes == [[0, 1, 2], [3]]

    writes.clear()
    written.clear()
    quick = OutcomeRecorder(write, window_s=0.05)
    started = time.monotonic()
    quick.put(4)
    quick.put(5)
    assert written.wait(10)  # nobody flushed: the thread wrote them once the window passed
    assert writes == [[4, 5]] and time.monotonic() - started >= 0.05
    quick.stop()
    quick.put(6)  # a stopped recorder starts its thread again
    quick.flush()
    assert writes == [[4, 5], [6]]
    quick.stop()


def test_a_failing_write_does_not_stop_the_recorder() -> None:
    writes: list[list[str]] = []
    second = threading.Event()

    def write(items: list[str]) -> None:
        if items == ["bad"]:
            raise RuntimeError("the write failed")
        writes.append(items)
        second.set()

    recorder = OutcomeRecorder(write, window_s=0.01)
    recorder.put("bad")
    deadline = time.monotonic() + 10
    while recorder.waiting and time.monotonic() < deadline:
        time.sleep(0.01)
    recorder.put("good")
    assert second.wait(10) and writes == [["good"]]
    recorder.stop()


def test_a_group_s_jobs_are_counted_once_each_with_their_own_state(
    store: SqlJobStore, images: LocalImageStore, events: JobEvents, settings: object
) -> None:
    """The metrics of jobs whose ends were recorded together: one count per job, by the state
    recorded (a failing job of the group too), its images, its run time."""
    metrics = Metrics()
    recording = RecordingStore(store)
    prompts = ["quick 0", "quick 1", "boom", "quick 2", "quick 3"]  # "boom": the fake engine raises
    ids = [store.submit(GenerationRequest(prompt=p, steps=1)).id for p in prompts]
    engine = FakeEngine(size=8)
    worker = Worker(recording, engine, images, events, settings, metrics=metrics)  # type: ignore[arg-type]
    worker.start()
    try:
        states = [finished(store, job_id).state for job_id in ids]
    finally:
        assert worker.stop(timeout=10)
    assert states == [JobState.SUCCEEDED] * 2 + [JobState.FAILED] + [JobState.SUCCEEDED] * 2
    assert max(recording.groups) > 1
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in metrics.registry.collect() for s in family.samples}
    finished_total = {labels: value for (name, labels), value in samples.items()
                      if name == "sdgate_jobs_finished_total"}
    assert finished_total == {(("error", ""), ("state", "succeeded")): 4,
                              (("error", "internal_error"), ("state", "failed")): 1}
    assert samples[("sdgate_images_generated_total", (("model", "fake"),))] == 4
    assert sum(v for (name, _), v in samples.items() if name == "sdgate_job_run_seconds_count") == 5
