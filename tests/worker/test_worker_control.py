"""``JobControl`` alone, over a recording store and a fake clock."""

from __future__ import annotations

import threading
import time

import pytest
from PIL import Image

from sdgate.core.engine import StepAction, StepReport
from sdgate.core.errors import StorageUnavailable
from sdgate.core.jobs import ControlAction, Progress
from sdgate.worker.control import CLAIM_FRESH_S, CONTROL_FRESH_S, PROGRESS_FIRST_S, Heartbeats, JobControl


class RecordingStore:
    def __init__(self) -> None:
        self.progress: list[Progress] = []
        self.control: ControlAction | None = None
        self.control_reads = 0
        self.unreachable = False  # the database away: every read fails

    def update_progress(self, job_id: str, progress: Progress) -> None:
        self.progress.append(progress)

    def pending_control(self, job_id: str) -> ControlAction | None:
        self.control_reads += 1
        if self.unreachable:
            raise StorageUnavailable("storage unavailable: could not reach the job database")
        return self.control

    def clear_control(self, job_id: str, action: ControlAction) -> None:
        if self.control is action:
            self.control = None


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def store() -> RecordingStore:
    return RecordingStore()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def control(store: RecordingStore, clock: Clock) -> JobControl:
    return JobControl(store, "job_1", interval_s=0.2, clock=clock)  # type: ignore[arg-type]


def report(step: int, steps: int = 10, iteration: int = 0, iterations: int = 1) -> StepReport:
    return StepReport(iteration=iteration, iterations=iterations, step=step, steps=steps)


def test_progress_is_written_first_last_and_at_most_every_interval(
    control: JobControl, store: RecordingStore, clock: Clock
) -> None:
    for step in range(1, 11):
        clock.now += 0.0625  # exact in binary: the 4th step after a write is the first past 0.2 s
        control.on_step(report(step))
    assert [p.step for p in store.progress] == [1, 5, 9, 10]  # step 1 came PROGRESS_FIRST_S in
    assert store.control_reads == 10  # the control flag is read at every step


def test_a_job_that_ends_within_progress_first_s_writes_no_progress(
    control: JobControl, store: RecordingStore, clock: Clock
) -> None:
    """Its outcome follows at once and says everything a progress write would."""
    for step in range(1, 4):
        clock.now += PROGRESS_FIRST_S / 4
        control.on_step(report(step, steps=3))
    assert store.progress == []


def test_a_graph_job_writes_each_node_it_reaches(control: JobControl, store: RecordingStore) -> None:
    """ComfyUI's ``executing`` message comes from these writes: never throttled away."""
    for node, step in (("3", 1), ("3", 2), ("8", 1)):
        control.on_step(StepReport(iteration=0, iterations=1, step=step, steps=10, node=node))
    assert [p.node for p in store.progress] == ["3", "8"]


def test_eta_comes_from_the_rate_since_the_first_step(
    control: JobControl, store: RecordingStore, clock: Clock
) -> None:
    clock.now += 3.0  # the model loading: not part of the rate
    control.on_step(report(1))
    clock.now += 4.0  # 4 more steps of 10, 1 s each
    control.on_step(report(5))
    first, second = store.progress
    assert first.eta_s is None  # no rate known at the first step
    assert second.eta_s == pytest.approx(5.0)
    assert second.fraction == pytest.approx(0.5)


def test_actions_map_to_step_actions(control: JobControl, store: RecordingStore, clock: Clock) -> None:
    def step(n: int) -> StepAction:
        return control.on_step(report(n))

    assert step(1) is StepAction.CONTINUE
    store.control = ControlAction.SKIP
    assert step(2) is StepAction.SKIP
    assert store.control is None  # a skip is consumed: the next iteration runs
    assert step(3) is StepAction.CONTINUE
    store.control = ControlAction.INTERRUPT
    assert step(4) is StepAction.INTERRUPT
    assert control.interrupted and not control.cancelled
    store.control = ControlAction.CANCEL
    assert step(5) is StepAction.CANCEL
    assert control.cancelled


def test_the_claim_that_found_no_request_counts_as_a_read(store: RecordingStore, clock: Clock) -> None:
    """A job of a few milliseconds reads its control not at all: its claim just did."""
    control = JobControl(store, "job_1", clock=clock, claimed_at=clock.now)  # type: ignore[arg-type]
    clock.now += CLAIM_FRESH_S / 2  # claimed in a group: the jobs before it ran meanwhile
    assert control.on_step(report(1, steps=2)) is StepAction.CONTINUE
    assert not control.cancel_requested()  # as if the job ended here
    assert store.control_reads == 0
    clock.now += 2 * CONTROL_FRESH_S
    assert control.on_step(report(2, steps=2)) is StepAction.CONTINUE  # every later step reads
    assert store.control_reads == 1
    store.control = ControlAction.CANCEL
    clock.now += 2 * CONTROL_FRESH_S  # a decode after the step took a while: read again
    assert control.cancel_requested()
    assert store.control_reads == 2


def test_a_claim_too_old_stands_for_no_read(store: RecordingStore, clock: Clock) -> None:
    control = JobControl(store, "job_1", clock=clock, claimed_at=clock.now)  # type: ignore[arg-type]
    store.control = ControlAction.CANCEL
    clock.now += 2 * CLAIM_FRESH_S
    assert control.on_step(report(1)) is StepAction.CANCEL
    assert store.control_reads == 1


def test_cancel_requested_reads_the_store_once_more(control: JobControl, store: RecordingStore) -> None:
    assert not control.cancel_requested()
    store.control = ControlAction.CANCEL
    assert control.cancel_requested()


def test_cancel_requested_reads_again_only_when_the_last_read_is_stale(
    control: JobControl, store: RecordingStore, clock: Clock
) -> None:
    control.on_step(report(10, steps=10))
    assert store.control_reads == 1
    clock.now += CONTROL_FRESH_S / 2  # the engine returned at once: the step's read stands
    assert not control.cancel_requested()
    assert store.control_reads == 1
    store.control = ControlAction.CANCEL
    clock.now += CONTROL_FRESH_S  # a decode after the last step took a while: read again
    assert control.cancel_requested()
    assert store.control_reads == 2


def test_a_control_read_that_fails_does_not_stop_the_job(control: JobControl, store: RecordingStore) -> None:
    """The database restarting while a job runs: the job goes on (a cancel is seen once it is back)."""
    store.unreachable = True
    assert control.on_step(report(1)) is StepAction.CONTINUE
    assert not control.cancel_requested()
    store.unreachable, store.control = False, ControlAction.CANCEL
    assert control.on_step(report(2)) is StepAction.CANCEL  # the failed read counted for nothing


def test_preview_is_lazy_cached_per_step_and_never_raises(control: JobControl) -> None:
    renders: list[int] = []

    def preview_of(step: int) -> StepReport:
        def render() -> Image.Image:
            renders.append(step)
            if step == 3:
                raise RuntimeError("decode failed")
            return Image.new("RGB", (2, 2))

        return StepReport(iteration=0, iterations=1, step=step, steps=10, preview=render)

    assert control.preview() is None
    control.on_step(preview_of(1))
    control.on_step(preview_of(2))
    assert renders == []  # nothing rendered until asked
    image = control.preview()
    assert control.preview() is image
    assert renders == [2]
    control.on_step(report(3))  # a step without a preview keeps the last one
    assert control.preview() is image
    control.on_step(preview_of(3))
    assert control.preview() is None


def test_the_executors_cached_nodes_are_written_at_once_and_once(control: JobControl,
                                                                 store: RecordingStore) -> None:
    control.on_cached(["4", "6"])
    assert store.progress == [Progress(cached=("4", "6"))]
    control.on_step(StepReport(iteration=0, iterations=1, step=1, steps=10, node="8"))
    assert len(store.progress) == 2 and store.progress[1].cached is None and store.progress[1].node == "8"

    def away(job_id: str, progress: Progress) -> None:
        raise StorageUnavailable("storage unavailable: could not reach the job database")

    store.update_progress = away  # type: ignore[method-assign]
    control.on_cached([])  # a failed write does not fail the job


class BeatingControl:
    """What ``Heartbeats`` calls on a job's control, recorded."""

    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        self.renewals = 0
        self.previews = 0

    def renew(self, worker_id: str) -> None:
        self.renewals += 1

    def store_preview(self) -> None:
        self.previews += 1


def test_one_heartbeat_thread_keeps_every_job_in_hand_and_none_after() -> None:
    beats = Heartbeats("w1", lease_s=0.06, preview_interval_s=0.01)  # renew every 20 ms, tick 10 ms
    first, second = BeatingControl("job_1"), BeatingControl("job_2")

    def beating_threads() -> int:
        return sum(thread.name == "sdgate-heartbeat-w1" for thread in threading.enumerate())

    with beats.beating(first):  # type: ignore[arg-type]
        with beats.beating(second):  # type: ignore[arg-type]
            assert beating_threads() == 1  # one thread for both jobs
            time.sleep(0.4)
        kept, first_then = second.renewals, first.renewals
        assert kept >= 3 and first_then >= 3 and second.previews >= 5
        time.sleep(0.2)
        assert second.renewals == kept  # out of hand: never touched again
        assert first.renewals > first_then  # still in hand: still kept
    deadline = time.monotonic() + 5
    while beating_threads() and time.monotonic() < deadline:  # a tick with no job in hand ends it
        time.sleep(0.01)
    assert beating_threads() == 0
    with beats.beating(first):  # type: ignore[arg-type]
        assert beating_threads() == 1  # started again
    beats.stop()
    assert beating_threads() == 0
