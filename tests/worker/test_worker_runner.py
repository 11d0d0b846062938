from __future__ import annotations

import io
import subprocess
import sys
import time
from collections.abc import Callable, Collection

import pytest
from PIL import Image

from sdgate.core.images import encode_png
from sdgate.core.jobs import ControlAction, Job, JobEventKind, JobState
from sdgate.core.requests import MAX_SEED, GenerationRequest, Mode
from sdgate.jobs.events import JobEvents
from sdgate.jobs.images import LocalImageStore
from sdgate.jobs.store import SqlJobStore
from sdgate.worker.control import PROGRESS_INTERVAL_S
from sdgate.worker.runner import Worker
from tests.fakes import FakeEngine

MakeWorker = Callable[..., Worker]


def wait_for_state(store: SqlJobStore, job_id: str, *states: JobState, timeout: float = 10) -> Job:
    deadline = time.monotonic() + timeout
    while True:
        job = store.get(job_id)
        if job.state in states:
            return job
        if time.monotonic() > deadline:
            raise AssertionError(f"{job_id} is {job.state.value}, not {[s.value for s in states]}")
        time.sleep(0.01)


def held(engine: FakeEngine) -> None:
    assert engine.held.wait(10), "the engine never reached its hold step"


def finished(store: SqlJobStore, job_id: str) -> Job:
    return wait_for_state(store, job_id, JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)


def test_a_job_runs_to_success_with_stored_pngs(
    store: SqlJobStore, images: LocalImageStore, make_worker: MakeWorker
) -> None:
    make_worker(FakeEngine(size=16, steps=4))
    request = GenerationRequest(prompt="a cat", seed=MAX_SEED - 1, batch_size=2, n_iter=2)
    job = finished(store, store.submit(request).id)

    assert job.state is JobState.SUCCEEDED, job.error
    result = job.result
    assert result is not None
    assert result.seeds == [MAX_SEED - 1, MAX_SEED, 0, 1]  # wraps at 2**64
    assert result.prompts == ("a cat",) * 4 and not result.interrupted
    assert (result.model_name, result.steps, result.width, result.height) == ("fake", 4, 16, 16)
    assert {"queued_s", "generate_s", "store_s", "sample_s"} <= set(result.timings)
    for stored in result.images:
        png = Image.open(io.BytesIO(images.get(stored.id)))
        assert png.format == "PNG" and png.size == (stored.width, stored.height) == (16, 16)
        assert png.info["parameters"] == stored.infotext
        assert f"Seed: {stored.seed}" in stored.infotext
    assert job.progress is not None and (job.progress.iteration, job.progress.step) == (1, 4)
    assert job.attempts == 1 and job.worker_id is not None


async def test_wait_terminal_wakes_when_the_worker_finishes(
    store: SqlJobStore, events: JobEvents, make_worker: MakeWorker
) -> None:
    make_worker(FakeEngine(step_s=0.01))
    job = store.submit(GenerationRequest(prompt="x"))
    done = await events.wait_terminal(store, job.id, timeout=10, poll_s=30)
    assert done.state is JobState.SUCCEEDED


def test_a_new_submission_wakes_an_idle_worker(
    store: SqlJobStore, settings: object, make_worker: MakeWorker
) -> None:
    settings.worker_poll_s = 60  # type: ignore[attr-defined]
    make_worker(FakeEngine())
    time.sleep(0.1)  # the worker is now waiting
    started = time.monotonic()
    finished(store, store.submit(GenerationRequest()).id)
    assert time.monotonic() - started < 5


def test_a_failing_job_does_not_stop_the_next(store: SqlJobStore, make_worker: MakeWorker) -> None:
    engine = FakeEngine()
    make_worker(engine)
    boom = store.submit(GenerationRequest(prompt="boom"))
    invalid = store.submit(GenerationRequest(prompt="invalid"))
    ok = store.submit(GenerationRequest(prompt="ok"))

    assert finished(store, boom.id).error == {"code": "internal_error", "message": "the fake engine exploded"}
    assert finished(store, invalid.id).error == {
        "code": "invalid_request",
        "message": "the fake engine refuses",
        "field": "prompt",
    }
    assert finished(store, ok.id).state is JobState.SUCCEEDED
    assert [r.prompt for r in engine.calls] == ["boom", "invalid", "ok"]


def test_cancel_of_a_queued_job_never_reaches_the_engine(store: SqlJobStore, make_worker: MakeWorker) -> None:
    engine = FakeEngine(steps=4, hold_at=(0, 2))  # the first job waits in the engine for the test
    slow = store.submit(GenerationRequest(prompt="slow"))
    doomed = store.submit(GenerationRequest(prompt="doomed"))
    make_worker(engine)
    held(engine)
    assert store.get(slow.id).state is JobState.RUNNING
    store.request_control(doomed.id, ControlAction.CANCEL)
    engine.release.set()

    assert finished(store, slow.id).state is JobState.SUCCEEDED
    assert finished(store, doomed.id).state is JobState.CANCELLED
    assert [r.prompt for r in engine.calls] == ["slow"]


def test_cancel_of_a_running_job(store: SqlJobStore, make_worker: MakeWorker) -> None:
    engine = FakeEngine(steps=10, hold_at=(0, 2))
    make_worker(engine)
    job = store.submit(GenerationRequest(prompt="long", n_iter=2))
    held(engine)
    store.request_control(job.id, ControlAction.CANCEL)
    engine.release.set()

    done = finished(store, job.id)
    assert done.state is JobState.CANCELLED
    assert done.result is None
    assert done.progress is not None and done.progress.iteration == 0 and done.progress.step <= 2


def test_interrupt_keeps_the_images_done_so_far(
    store: SqlJobStore, images: LocalImageStore, make_worker: MakeWorker
) -> None:
    engine = FakeEngine(steps=10, hold_at=(1, 2))
    make_worker(engine)
    job = store.submit(GenerationRequest(prompt="long", n_iter=3, seed=10))
    held(engine)
    store.request_control(job.id, ControlAction.INTERRUPT)
    engine.release.set()

    done = finished(store, job.id)
    assert done.state is JobState.SUCCEEDED  # A1111: an interrupted job still returns its images
    assert done.result is not None and done.result.interrupted
    assert done.result.seeds == [10, 11]  # the interrupted iteration is decoded and returned too
    assert images.exists(done.result.images[0].id)


def test_skip_abandons_only_the_current_iteration(store: SqlJobStore, make_worker: MakeWorker) -> None:
    engine = FakeEngine(steps=10, hold_at=(0, 2))
    make_worker(engine)
    job = store.submit(GenerationRequest(prompt="long", n_iter=3, seed=10))
    held(engine)
    store.request_control(job.id, ControlAction.SKIP)
    engine.release.set()

    done = finished(store, job.id)
    assert done.state is JobState.SUCCEEDED
    assert done.result is not None and done.result.seeds == [11, 12]
    assert not done.result.interrupted
    assert done.control is None  # consumed by the worker


def test_init_images_and_mask_are_decoded_from_the_image_store(
    store: SqlJobStore, images: LocalImageStore, make_worker: MakeWorker
) -> None:
    engine = FakeEngine()
    make_worker(engine)
    init = images.put(encode_png(Image.new("RGB", (24, 8), "blue"), ""))
    mask = images.put(encode_png(Image.new("L", (24, 8), 255), ""))
    job = store.submit(GenerationRequest(mode=Mode.INPAINT, init_images=(init,), mask=mask))

    assert finished(store, job.id).state is JobState.SUCCEEDED
    inputs = engine.inputs[0]
    assert [im.size for im in inputs.init_images] == [(24, 8)]
    assert inputs.init_images[0].getpixel((0, 0)) == (0, 0, 255)
    assert inputs.mask is not None and inputs.mask.mode == "L"


def test_missing_or_broken_init_images_fail_the_job(
    store: SqlJobStore, images: LocalImageStore, make_worker: MakeWorker
) -> None:
    engine = FakeEngine()
    make_worker(engine)
    missing = store.submit(GenerationRequest(mode=Mode.IMG2IMG, init_images=("img_" + "0" * 24,)))
    broken_id = images.put(b"\x89PNG\r\n\x1a\nnot really")
    broken = store.submit(GenerationRequest(mode=Mode.INPAINT, mask=broken_id))

    missing_error = finished(store, missing.id).error
    assert missing_error is not None
    assert (missing_error["code"], missing_error["field"]) == ("not_found", "init_images")
    broken_error = finished(store, broken.id).error
    assert broken_error is not None
    assert (broken_error["code"], broken_error["field"]) == ("invalid_request", "mask")
    assert engine.calls == []


def test_current_preview_is_rendered_lazily_for_the_running_job(
    store: SqlJobStore, make_worker: MakeWorker
) -> None:
    engine = FakeEngine(steps=10, hold_at=(0, 3))
    worker = make_worker(engine)
    job = store.submit(GenerationRequest(prompt="long"))
    other = store.submit(GenerationRequest(prompt="next"))
    held(engine)

    assert worker.current_job_id == job.id
    preview = worker.current_preview(job.id)
    assert isinstance(preview, Image.Image) and preview.size == (8, 8)
    assert preview.getpixel((0, 0)) == (0, 20, 0)  # step 2's, the latest reported
    assert worker.current_preview(job.id) is preview  # rendered once per step
    assert worker.current_preview(other.id) is None
    engine.release.set()
    finished(store, job.id)
    finished(store, other.id)
    assert worker.current_preview(job.id) is None
    assert worker.current_job_id is None


def test_progress_events_are_throttled(
    store: SqlJobStore, events: JobEvents, make_worker: MakeWorker
) -> None:
    kinds: list[JobEventKind] = []
    events.add_listener(lambda kind, job: kinds.append(kind))
    make_worker(FakeEngine(steps=500, step_s=0.002))  # 500 steps of at least 2 ms: a second or more
    job = store.submit(GenerationRequest())

    done = finished(store, job.id)
    assert done.progress is not None and done.progress.step == 500  # the last step is always written
    assert kinds[:2] == [JobEventKind.QUEUED, JobEventKind.STARTED]
    assert kinds[-1] is JobEventKind.SUCCEEDED
    assert 2 <= kinds.count(JobEventKind.PROGRESS) <= 500 * 0.002 / PROGRESS_INTERVAL_S * 2


def test_a_job_quicker_than_the_interval_writes_its_progress_with_its_end(
    store: SqlJobStore, events: JobEvents, make_worker: MakeWorker
) -> None:
    kinds: list[JobEventKind] = []
    events.add_listener(lambda kind, job: kinds.append(kind))
    make_worker(FakeEngine(steps=5))  # 5 instant steps
    job = store.submit(GenerationRequest())

    done = finished(store, job.id)
    assert kinds == [JobEventKind.QUEUED, JobEventKind.STARTED, JobEventKind.SUCCEEDED]
    assert done.progress is not None and (done.progress.step, done.progress.steps) == (5, 5)


class FlakyStore:
    """Fails the first claim, as a locked or unreachable database would."""

    def __init__(self, store: SqlJobStore) -> None:
        self._store = store
        self.claims = 0

    def claim_next(self, worker_id: str, *, prefer_models: Collection[str] = ()) -> Job | None:
        self.claims += 1
        if self.claims == 1:
            raise RuntimeError("database is locked")
        return self._store.claim_next(worker_id, prefer_models=prefer_models)

    def __getattr__(self, name: str) -> object:
        return getattr(self._store, name)


def test_the_worker_survives_store_errors(
    store: SqlJobStore, images: LocalImageStore, events: JobEvents, settings: object
) -> None:
    flaky = FlakyStore(store)
    worker = Worker(flaky, FakeEngine(), images, events, settings)  # type: ignore[arg-type]
    worker.start()
    try:
        job = store.submit(GenerationRequest())
        assert finished(store, job.id).state is JobState.SUCCEEDED
        assert flaky.claims >= 2
    finally:
        assert worker.stop(timeout=10)


def test_run_once_and_stop(store: SqlJobStore, make_worker: MakeWorker) -> None:
    worker = make_worker(FakeEngine(), start=False)
    assert worker.run_once() is False
    job = store.submit(GenerationRequest())
    assert worker.run_once() is True
    assert store.get(job.id).state is JobState.SUCCEEDED
    assert worker.stop(timeout=1)  # never started: nothing to wait for

    started = make_worker(FakeEngine())
    with pytest.raises(RuntimeError):
        started.start()


def test_importing_the_worker_does_not_import_torch() -> None:
    code = "import sys, sdgate.worker, sdgate.jobs; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


class GroupCountingStore:
    """Records how many jobs each claim took."""

    def __init__(self, store: SqlJobStore) -> None:
        self._store = store
        self.claims: list[int] = []

    def claim_next(self, worker_id: str, *, prefer_models: Collection[str] = ()) -> Job | None:
        job = self._store.claim_next(worker_id, prefer_models=prefer_models)
        self.claims.append(int(job is not None))
        return job

    def claim_group(self, worker_id: str, *, prefer_models: Collection[str] = (),
                    limit: int = 1) -> list[Job]:
        jobs = self._store.claim_group(worker_id, prefer_models=prefer_models, limit=limit)
        self.claims.append(len(jobs))
        return jobs

    def __getattr__(self, name: str) -> object:
        return getattr(self._store, name)


def test_quick_jobs_are_claimed_in_groups_and_slow_ones_one_at_a_time(
    store: SqlJobStore, images: LocalImageStore, events: JobEvents, settings: object
) -> None:
    counting = GroupCountingStore(store)
    ids = [store.submit(GenerationRequest(prompt=f"quick {i}")).id for i in range(40)]
    engine = FakeEngine(size=8, steps=2, slow_step_s=0.05)  # prompts with "slow" take 0.1 s
    worker = Worker(counting, engine, images, events, settings)  # type: ignore[arg-type]
    worker.start()
    try:
        assert all(finished(store, job_id).state is JobState.SUCCEEDED for job_id in ids)
        assert max(counting.claims) > 1 and sum(counting.claims) == 40
        assert all(store.get(job_id).attempts == 1 for job_id in ids)
        first_slow = store.submit(GenerationRequest(prompt="slow")).id
        assert finished(store, first_slow).state is JobState.SUCCEEDED
        counting.claims.clear()
        slow = [store.submit(GenerationRequest(prompt=f"slow {i}")).id for i in range(3)]
        assert all(finished(store, job_id).state is JobState.SUCCEEDED for job_id in slow)
        assert [c for c in counting.claims if c] == [1, 1, 1]  # after a slow job: one at a time
    finally:
        assert worker.stop(timeout=10)
