"""A group of quick jobs has its outcomes written beside it, several per transaction."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import Any

import pytest

from sdgate.core.errors import StorageUnavailable
from sdgate.core.jobs import Job, JobState, Outcome
from sdgate.core.requests import GenerationRequest
from sdgate.jobs.events import JobEvents
from sdgate.jobs.images import LocalImageStore
from sdgate.jobs.store import SqlJobStore
from sdgate.metrics import Metrics
from sdgate.settings import Settings
from sdgate.worker.recording import GroupCommit
from sdgate.worker.runner import MAX_GROUP, Worker
from tests.fakes import FakeEngine


def test_items_written_while_one_write_runs_share_the_next() -> None:
    writes: list[list[int]] = []
    first_started, go_on = threading.Event(), threading.Event()

    def flush(items: list[int]) -> None:
        if not writes:
            first_started.set()
            assert go_on.wait(10)
        writes.append(items)

    with GroupCommit(flush, name="test", max_pending=10) as commit:
        commit.put(0)
        assert first_started.wait(10)
        for i in range(1, 6):  # all handed over while the first write is still running
            commit.put(i)
        go_on.set()
    assert writes == [[0], [1, 2, 3, 4, 5]]  # leaving the block waited for the last write


def test_put_waits_while_max_pending_wait() -> None:
    go_on = threading.Event()
    written: list[int] = []

    def flush(items: list[int]) -> None:
        assert go_on.wait(10)
        written.extend(items)

    with GroupCommit(flush, name="test", max_pending=2) as commit:
        commit.put(0)  # being written (held)
        time.sleep(0.05)
        commit.put(1)
        commit.put(2)  # two waiting: the limit
        third = threading.Thread(target=commit.put, args=(3,))
        third.start()
        third.join(0.2)
        assert third.is_alive(), "put did not wait for room"
        go_on.set()
        third.join(10)
        assert not third.is_alive()
    assert written == [0, 1, 2, 3]


def test_a_failed_write_does_not_stop_the_next() -> None:
    written: list[int] = []

    def flush(items: list[int]) -> None:
        if 0 in items:
            raise RuntimeError("boom")
        written.extend(items)

    with GroupCommit(flush, name="test", max_pending=4) as commit:
        commit.put(0)
        time.sleep(0.05)
        commit.put(1)
    assert written == [1]
    with pytest.raises(RuntimeError):
        commit.put(2)  # closed
    with pytest.raises(ValueError):
        GroupCommit(flush, name="test", max_pending=0)


class RecordingStore:
    """The real store, counting how outcomes were written; ``refuse_many`` makes ``finish_many``
    raise as a database that is away would."""

    def __init__(self, store: SqlJobStore, *, refuse_many: bool = False) -> None:
        self._store = store
        self.refuse_many = refuse_many
        self.many: list[int] = []  # the size of each finish_many
        self.single = 0  # succeed / fail / cancelled calls

    def finish_many(self, outcomes: Sequence[Outcome], *, worker_id: str) -> list[Any]:
        self.many.append(len(outcomes))
        if self.refuse_many:
            raise StorageUnavailable("the database went away")
        return self._store.finish_many(outcomes, worker_id=worker_id)

    def succeed(self, *args: Any, **kwargs: Any) -> Job:
        self.single += 1
        return self._store.succeed(*args, **kwargs)

    def fail(self, *args: Any, **kwargs: Any) -> Job:
        self.single += 1
        return self._store.fail(*args, **kwargs)

    def __getattr__(self, name: str) -> object:
        return getattr(self._store, name)


def _run_groups(worker: Worker, runs: int) -> None:
    for _ in range(runs):
        assert worker.run_once()
        assert worker.current_job_ids == ()  # every outcome written when run_once returns


@pytest.mark.parametrize("refuse_many", [False, True])
def test_a_groups_outcomes_are_each_recorded_once(
    store: SqlJobStore, images: LocalImageStore, events: JobEvents, settings: Settings, refuse_many: bool
) -> None:
    prompts = [f"quick {i}" for i in range(1 + 2 + 4 + MAX_GROUP)]
    prompts[5], prompts[9] = "boom", "invalid"  # failures inside groups: each its own
    ids = [store.submit(GenerationRequest(prompt=p)).id for p in prompts]
    counting = RecordingStore(store, refuse_many=refuse_many)
    metrics = Metrics()
    worker = Worker(counting, FakeEngine(size=8, steps=1), images, events, settings,  # type: ignore[arg-type]
                    metrics=metrics)
    _run_groups(worker, 4)  # claims of 1, 2, 4 and 8 jobs: quick jobs are claimed in doubling groups
    assert worker.run_once() is False

    jobs = [store.get(job_id) for job_id in ids]
    failed = {job.id for job in jobs if job.state is JobState.FAILED}
    assert failed == {ids[5], ids[9]}
    assert all(job.state is JobState.SUCCEEDED and job.result and job.result.images
               for job in jobs if job.id not in failed)
    assert store.get(ids[9]).error is not None and store.get(ids[9]).error["code"] == "invalid_request"
    assert sum(counting.many) >= len(ids) - 1  # every grouped outcome went to finish_many
    if refuse_many:  # ... which refused: each was then recorded alone
        assert counting.single == len(ids)
    else:
        assert counting.single == 1  # the lone first claim only
    text = metrics.render().decode()
    finished = [line for line in text.splitlines() if line.startswith("sdgate_jobs_finished_total{")]
    assert sum(float(line.rsplit(" ", 1)[1]) for line in finished) == len(ids)  # each counted once


def test_a_job_finished_elsewhere_meanwhile_is_left_alone(
    store: SqlJobStore, images: LocalImageStore, events: JobEvents, settings: Settings
) -> None:
    """A job of the group cancelled and ended by someone else before its outcome is written: the
    group's write refuses that one job only."""
    ids = [store.submit(GenerationRequest(prompt=f"q{i}")).id for i in range(3)]
    victim = ids[2]

    class EndingStore(RecordingStore):
        def finish_many(self, outcomes: Sequence[Outcome], *, worker_id: str) -> list[Any]:
            if any(o.job_id == victim for o in outcomes):
                self._store.fail(victim, {"code": "elsewhere", "message": "ended by an operator"})
            return super().finish_many(outcomes, worker_id=worker_id)

    worker = Worker(EndingStore(store), FakeEngine(size=8, steps=1), images, events,  # type: ignore[arg-type]
                    settings)
    _run_groups(worker, 2)
    assert [store.get(i).state for i in ids] == [JobState.SUCCEEDED, JobState.SUCCEEDED, JobState.FAILED]
    assert store.get(victim).error == {"code": "elsewhere", "message": "ended by an operator"}
