"""Cross-request batching in the worker (``worker.batching``), on SQLite and PostgreSQL: which jobs
share an engine batch (compatible ones, never others; at most B rows; the maximum wait), and that each
job of a batch keeps its own outcome (a cancel, a bad input, a failed batch)."""

from __future__ import annotations

import functools
import io
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest
from PIL import Image

from sdgate.core.batching import batch_key
from sdgate.core.engine import (
    EngineInputs,
    EngineJob,
    EngineOutput,
    GeneratedImage,
    NoControl,
    StepAction,
    StepReport,
)
from sdgate.core.errors import JobCancelled
from sdgate.core.jobs import ControlAction, Job, JobState
from sdgate.core.requests import GenerationRequest
from sdgate.jobs.events import JobEvents
from sdgate.jobs.images import LocalImageStore
from sdgate.jobs.store import SqlJobStore
from sdgate.metrics import Metrics
from sdgate.settings import Settings
from sdgate.worker.runner import Worker
from tests.fakes import FakeEngine
from tests.jobs.conftest import DATABASES, PgServer, pg_server, services_required  # noqa: F401 - fixtures

MakeWorker = Callable[..., Worker]
SLACK_S = 2.0  # a noisy machine: timing bounds are generous


class BatchingEngine(FakeEngine):
    """A ``FakeEngine`` that also runs batches, in lockstep: every step is reported to each running
    job's own control, and a job that is cancelled or interrupted leaves the batch while the others go
    on. Each image is what the job gives alone (its colour is its seed). ``batches`` records the job ids
    of every batch; a batch holding a prompt with "huge" raises out of memory as a whole; the scripted
    prompts of ``FakeEngine`` ("invalid", "boom", "oom") fail their job alone."""

    def __init__(self, *, rows: int = 8, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.rows = rows
        self.batches: list[list[str]] = []
        self.batch_started_at: list[float] = []
        self.started_at: list[float] = []  # every engine call, alone or batched

    def batch_rows(self, request: GenerationRequest) -> int:
        return self.rows

    def generate(self, request: GenerationRequest, inputs: EngineInputs, control: object) -> EngineOutput:
        self.started_at.append(time.monotonic())
        return super().generate(request, inputs, control)  # type: ignore[arg-type]

    def generate_batch(self, jobs: Sequence[EngineJob]) -> list[EngineOutput | BaseException]:
        self.started_at.append(time.monotonic())
        self.batches.append([job.control.job_id for job in jobs])  # type: ignore[attr-defined]
        if any("huge" in job.request.prompt for job in jobs):
            raise RuntimeError("CUDA out of memory. Tried to allocate 20.00 GiB")
        outcomes: dict[int, EngineOutput | BaseException] = {}
        interrupted: set[int] = set()
        stepping: list[int] = []
        for index, job in enumerate(jobs):
            try:
                self._raise_if_scripted(job.request.prompt)
                stepping.append(index)
            except Exception as exc:  # this job's own failure
                outcomes[index] = exc
        steps = jobs[0].request.steps or self.steps
        for step in range(1, steps + 1):
            if self.step_s:
                time.sleep(self.step_s)
            if (0, step) == self.hold_at and not self.held.is_set():
                self.held.set()
                self.release.wait(10)
            for index in list(stepping):
                report = StepReport(iteration=0, iterations=1, step=step, steps=steps,
                                    preview=functools.partial(Image.new, "RGB", (8, 8), (0, step, index)))
                action = jobs[index].control.on_step(report)
                if action is StepAction.CANCEL:
                    outcomes[index] = JobCancelled("cancelled")
                    stepping.remove(index)
                elif action is StepAction.INTERRUPT:
                    interrupted.add(index)
                    stepping.remove(index)
        for index, job in enumerate(jobs):
            if index not in outcomes:
                outcomes[index] = self._output(job.request, steps, interrupted=index in interrupted)
        return [outcomes[index] for index in range(len(jobs))]

    def _output(self, request: GenerationRequest, steps: int, *, interrupted: bool) -> EngineOutput:
        width, height = request.width or self.size, request.height or self.size
        images: list[GeneratedImage] = [
            self._image(request, seed, subseed, width, height, steps)
            for seed, subseed in zip(request.seeds(), request.subseeds(), strict=True)
        ]
        return EngineOutput(images=images, model_name=request.model or "fake", model_hash=None,
                            sampler=request.sampler, scheduler=request.scheduler, width=width, height=height,
                            steps=steps, interrupted=interrupted, timings={"sample_s": 0.0})


@pytest.fixture(params=DATABASES)
def store(request: pytest.FixtureRequest, settings: Settings, events: JobEvents) -> Iterator[SqlJobStore]:
    """The worker tests' store, on SQLite and on PostgreSQL (as ``tests/jobs/conftest.py``'s)."""
    if request.param == "sqlite":
        with SqlJobStore(settings.database_url, events=events) as s:
            yield s
        return
    server: PgServer = request.getfixturevalue("pg_server")
    with server.database() as url, SqlJobStore(url, events=events) as s:
        yield s


def _submit(store: SqlJobStore, prompt: str = "p", *, priority: int = 0, **fields: object) -> str:
    shape: dict[str, object] = {"width": 16, "height": 16, "steps": 3, **fields}
    request = GenerationRequest(prompt=prompt, **shape)  # type: ignore[arg-type]
    return store.submit(request, priority=priority).id


def _finished(store: SqlJobStore, job_id: str, timeout: float = 15) -> Job:
    deadline = time.monotonic() + timeout
    while (job := store.get(job_id)).state in (JobState.QUEUED, JobState.RUNNING):
        assert time.monotonic() < deadline, f"{job_id} is still {job.state.value}"
        time.sleep(0.01)
    return job


def _pixels(images: LocalImageStore, job: Job) -> list[tuple[int, ...]]:
    assert job.result is not None
    return [Image.open(io.BytesIO(images.get(image.id))).convert("RGB").getpixel((0, 0))  # type: ignore[misc]
            for image in job.result.images]


def _alone_pixels(store: SqlJobStore, job_id: str) -> list[tuple[int, ...]]:
    """What the job's images are when it runs alone."""
    request = store.get(job_id).request
    assert isinstance(request, GenerationRequest)
    output = FakeEngine(size=16, steps=3).generate(request, EngineInputs(), NoControl())
    return [generated.image.getpixel((0, 0)) for generated in output.images]  # type: ignore[misc]


def _run_all(worker: Worker) -> None:
    while worker.run_once():
        pass


@pytest.fixture
def batching(settings: Settings) -> Settings:
    """No wait for mates unless a test asks: the claims alone decide a batch."""
    settings.batch_wait_ms = 0
    return settings


def test_compatible_jobs_run_as_one_batch_each_with_its_own_result(
    store: SqlJobStore, images: LocalImageStore, make_worker: MakeWorker, batching: Settings
) -> None:
    engine = BatchingEngine(size=16, steps=3)
    ids = [
        _submit(store, "a cat", seed=1),
        _submit(store, "a dog", seed=2, cfg_scale=9.0, batch_size=2),
        _submit(store, "a fox", negative_prompt="blurry", seed=3, n_iter=2),
    ]
    metrics = Metrics()
    worker = make_worker(engine, start=False, metrics=metrics)
    assert worker.run_once()
    assert engine.batches == [ids] and engine.calls == []

    jobs = [store.get(job_id) for job_id in ids]
    assert [job.state for job in jobs] == [JobState.SUCCEEDED] * 3
    assert [job.result.seeds for job in jobs if job.result] == [[1], [2, 3], [3, 4]]
    assert [job.result.prompts for job in jobs if job.result] == [("a cat",), ("a dog",) * 2, ("a fox",) * 2]
    for job in jobs:
        assert job.progress is not None and (job.progress.step, job.progress.steps) == (3, 3)
        assert job.attempts == 1 and job.worker_id == worker.worker_id
        assert _pixels(images, job) == _alone_pixels(store, job.id)
    assert worker.current_job_ids == () and worker.current_job_id is None
    assert b'sdgate_jobs_finished_total{error="",state="succeeded"} 3.0' in metrics.render()


def test_incompatible_jobs_never_share_a_batch(
    store: SqlJobStore, make_worker: MakeWorker, batching: Settings
) -> None:
    engine = BatchingEngine(size=16, steps=3)
    shapes: list[dict[str, object]] = [
        {}, {"width": 32}, {"steps": 4}, {"sampler": "Euler"}, {"cfg_scale": 1.0}, {"subseed_strength": 0.5},
        {"model": "other"}, {"priority": 3},
    ]
    ids = {_submit(store, f"p{i}", **shape): shape for i, shape in enumerate(shapes * 3)}
    worker = make_worker(engine)  # a running worker: quick jobs are claimed in groups, then batched
    assert all(_finished(store, job_id).state is JobState.SUCCEEDED for job_id in ids)
    assert worker.stop(timeout=10)

    batched = [job_id for batch in engine.batches for job_id in batch]
    assert len(batched) == len(set(batched))
    for batch in engine.batches:
        jobs = [store.get(job_id) for job_id in batch]
        assert len({batch_key(job.request) for job in jobs}) == 1, [ids[j] for j in batch]
        assert len({job.priority for job in jobs}) == 1
        assert batch_key(jobs[0].request) is not None
    alone = [job_id for job_id, shape in ids.items() if "subseed_strength" in shape]
    assert not set(alone) & set(batched)  # a job without a key always runs alone
    assert len(batched) + len(engine.calls) == len(ids)


def test_a_batch_holds_at_most_b_rows(
    store: SqlJobStore, make_worker: MakeWorker, batching: Settings
) -> None:
    engine = BatchingEngine(size=16, steps=3, rows=4)
    rows = {_submit(store, f"p{i}", batch_size=b, n_iter=n): b * n
            for i, (b, n) in enumerate([(2, 1), (3, 1), (1, 1), (2, 1), (1, 4), (1, 1), (1, 1), (5, 1)])}
    worker = make_worker(engine, start=False)
    _run_all(worker)
    assert all(store.get(job_id).state is JobState.SUCCEEDED for job_id in rows)
    assert engine.batches, "nothing was batched"
    assert all(sum(rows[job_id] for job_id in batch) <= 4 for batch in engine.batches)
    assert max(sum(rows[job_id] for job_id in batch) for batch in engine.batches) == 4
    # A job of 4 rows or more fills a batch alone: it runs alone.
    big = [request.image_count for request in engine.calls]
    assert 4 in big and 5 in big


def test_batch_max_caps_the_rows(store: SqlJobStore, make_worker: MakeWorker, batching: Settings) -> None:
    batching.batch_max = 2
    engine = BatchingEngine(size=16, steps=3, rows=8)
    ids = [_submit(store, f"p{i}") for i in range(5)]
    _run_all(make_worker(engine, start=False))
    assert engine.batches == [ids[0:2], ids[2:4]]
    assert [request.prompt for request in engine.calls] == ["p4"]


def test_batch_max_1_runs_every_job_alone(
    store: SqlJobStore, make_worker: MakeWorker, batching: Settings
) -> None:
    batching.batch_max = 1
    engine = BatchingEngine(size=16, steps=3)
    ids = [_submit(store, f"p{i}") for i in range(4)]
    _run_all(make_worker(engine, start=False))
    assert engine.batches == [] and [r.prompt for r in engine.calls] == ["p0", "p1", "p2", "p3"]
    assert all(store.get(job_id).state is JobState.SUCCEEDED for job_id in ids)


def test_higher_priority_jobs_batch_first_and_apart(
    store: SqlJobStore, make_worker: MakeWorker, batching: Settings
) -> None:
    engine = BatchingEngine(size=16, steps=3)
    low = [_submit(store, f"low{i}") for i in range(2)]
    high = [_submit(store, f"high{i}", priority=5) for i in range(2)]
    low.append(_submit(store, "low2"))
    _run_all(make_worker(engine, start=False))
    assert engine.batches == [high, low]


def test_a_lone_job_waits_at_most_batch_wait_ms(
    store: SqlJobStore, make_worker: MakeWorker, settings: Settings
) -> None:
    settings.batch_wait_ms = 300
    engine = BatchingEngine(size=16, steps=3)
    make_worker(engine)
    time.sleep(0.1)  # the worker is idle, waiting for a submission
    submitted = time.monotonic()
    job_id = _submit(store)
    assert _finished(store, job_id).state is JobState.SUCCEEDED
    waited = engine.started_at[0] - submitted
    assert 0.25 <= waited <= 0.3 + SLACK_S  # it waited for mates, then ran alone
    assert engine.batches == [] and len(engine.calls) == 1


def test_a_lone_job_starts_at_once_by_default(store: SqlJobStore, make_worker: MakeWorker) -> None:
    engine = BatchingEngine(size=16, steps=3)
    make_worker(engine)  # batch_wait_ms: 15
    time.sleep(0.1)
    submitted = time.monotonic()
    job_id = _submit(store)
    assert _finished(store, job_id).state is JobState.SUCCEEDED
    assert engine.started_at[0] - submitted <= 0.015 + SLACK_S / 2


def test_jobs_submitted_within_the_window_join_the_batch(
    store: SqlJobStore, make_worker: MakeWorker, settings: Settings
) -> None:
    settings.batch_wait_ms = 1000
    engine = BatchingEngine(size=16, steps=3, rows=3)
    make_worker(engine)
    time.sleep(0.1)
    first = _submit(store, "first")
    time.sleep(0.1)
    late = [_submit(store, "late 1"), _submit(store, "late 2")]
    assert all(_finished(store, job_id).state is JobState.SUCCEEDED for job_id in [first, *late])
    assert engine.batches == [[first, *late]]


def test_a_full_batch_does_not_wait(store: SqlJobStore, make_worker: MakeWorker, settings: Settings) -> None:
    settings.batch_wait_ms = 1000
    engine = BatchingEngine(size=16, steps=3, rows=2)
    ids = [_submit(store, "a"), _submit(store, "b")]
    worker = make_worker(engine, start=False)
    started = time.monotonic()
    assert worker.run_once()
    assert time.monotonic() - started < 0.9  # the rows were filled at the claim: no wait
    assert engine.batches == [ids]


def test_one_cancelled_job_drops_alone_and_its_mates_images_do_not_change(
    store: SqlJobStore, images: LocalImageStore, make_worker: MakeWorker, batching: Settings
) -> None:
    engine = BatchingEngine(size=16, steps=3, hold_at=(0, 2))
    ids = [_submit(store, f"p{i}", seed=10 + i, batch_size=2) for i in range(3)]
    worker = make_worker(engine, start=False)
    runner = threading.Thread(target=worker.run_once)
    runner.start()
    try:
        assert engine.held.wait(10)
        assert worker.current_job_ids == tuple(ids) and worker.current_job_id == ids[0]
        assert all(worker.current_preview(job_id) is not None for job_id in ids)  # step 1's
        assert worker.current_preview("not-in-hand") is None
        store.request_control(ids[1], ControlAction.CANCEL)
        store.request_control(ids[2], ControlAction.INTERRUPT)
    finally:
        engine.release.set()
        runner.join(15)
    cancelled, interrupted = store.get(ids[1]), store.get(ids[2])
    assert cancelled.state is JobState.CANCELLED and cancelled.result is None
    assert interrupted.state is JobState.SUCCEEDED and interrupted.result is not None
    assert interrupted.result.interrupted
    mate = store.get(ids[0])
    assert mate.state is JobState.SUCCEEDED and mate.result is not None and not mate.result.interrupted
    assert mate.progress is not None and mate.progress.step == 3
    assert _pixels(images, mate) == _alone_pixels(store, ids[0])
    assert engine.batches == [ids] and worker.current_job_ids == ()


def test_a_job_the_engine_fails_does_not_fail_its_mates(
    store: SqlJobStore, make_worker: MakeWorker, batching: Settings
) -> None:
    engine = BatchingEngine(size=16, steps=3)
    good, invalid, boom, good2 = (_submit(store, prompt) for prompt in ("good", "invalid", "boom", "good 2"))
    _run_all(make_worker(engine, start=False))
    assert engine.batches == [[good, invalid, boom, good2]]
    assert store.get(good).state is store.get(good2).state is JobState.SUCCEEDED
    failed = store.get(invalid)
    assert failed.state is JobState.FAILED and failed.error is not None
    assert failed.error["code"] == "invalid_request"
    crashed = store.get(boom)
    assert crashed.state is JobState.FAILED and crashed.error is not None
    assert crashed.error["code"] == "internal_error" and "exploded" in crashed.error["message"]


def test_a_batch_out_of_memory_runs_each_job_alone(
    store: SqlJobStore, make_worker: MakeWorker, batching: Settings
) -> None:
    engine = BatchingEngine(size=16, steps=3)
    ids = [_submit(store, "huge 1"), _submit(store, "oom"), _submit(store, "huge 2")]
    _run_all(make_worker(engine, start=False))
    assert engine.batches == [ids]
    assert [request.prompt for request in engine.calls] == ["huge 1", "oom", "huge 2"]  # then alone
    jobs = [store.get(job_id) for job_id in ids]
    assert [job.state for job in jobs] == [JobState.SUCCEEDED, JobState.FAILED, JobState.SUCCEEDED]
    assert jobs[1].error is not None and jobs[1].error["code"] == "out_of_memory"  # its own, alone
    assert all(job.attempts == 1 for job in jobs)


def test_a_mate_finished_elsewhere_leaves_the_batch_alone(
    store: SqlJobStore, make_worker: MakeWorker, batching: Settings
) -> None:
    engine = BatchingEngine(size=16, steps=3, hold_at=(0, 2))
    ids = [_submit(store, f"p{i}") for i in range(3)]
    worker = make_worker(engine, start=False)
    runner = threading.Thread(target=worker.run_once)
    runner.start()
    try:
        assert engine.held.wait(10)
        store.fail(ids[1], {"code": "internal_error", "message": "failed by an operator"})
    finally:
        engine.release.set()
        runner.join(15)
    assert [store.get(job_id).state for job_id in ids] == [JobState.SUCCEEDED, JobState.FAILED,
                                                           JobState.SUCCEEDED]
    assert store.get(ids[1]).error == {"code": "internal_error", "message": "failed by an operator"}


class RefusingStore:
    """The store, but claims of batch mates fail (a database going away between two claims)."""

    def __init__(self, store: SqlJobStore) -> None:
        self._store = store

    def claim_batch_mates(self, *args: object, **kwargs: object) -> list[Job]:
        raise RuntimeError("the database went away")

    def __getattr__(self, name: str) -> object:
        return getattr(self._store, name)


def test_a_batch_that_cannot_be_gathered_still_runs_what_was_claimed(
    store: SqlJobStore, images: LocalImageStore, events: JobEvents, batching: Settings
) -> None:
    engine = BatchingEngine(size=16, steps=3)
    ids = [_submit(store, f"p{i}") for i in range(2)]
    _run_all(Worker(RefusingStore(store), engine, images, events, batching))  # type: ignore[arg-type]
    assert [store.get(job_id).state for job_id in ids] == [JobState.SUCCEEDED] * 2
    assert engine.batches == [] and len(engine.calls) == 2

    def no_rows(request: GenerationRequest) -> int:
        raise RuntimeError("cannot tell")

    engine.batch_rows = no_rows  # type: ignore[method-assign]
    job_id = _submit(store, "alone")
    _run_all(Worker(store, engine, images, events, batching))
    assert store.get(job_id).state is JobState.SUCCEEDED


def test_many_quick_jobs_all_finish_once_in_batches(
    store: SqlJobStore, make_worker: MakeWorker, settings: Settings
) -> None:
    engine = BatchingEngine(size=16, steps=2, rows=4)
    ids = [_submit(store, f"p{i}", width=16 if i % 4 else 32, batch_size=1 + i % 2) for i in range(40)]
    make_worker(engine)
    make_worker(engine)
    assert all(_finished(store, job_id).state is JobState.SUCCEEDED for job_id in ids)
    assert all(store.get(job_id).attempts == 1 for job_id in ids)
    batched = [job_id for batch in engine.batches for job_id in batch]
    assert len(batched) == len(set(batched)) and len(batched) + len(engine.calls) == len(ids)
    assert max(len(batch) for batch in engine.batches) > 1


def test_the_null_engine_runs_a_batch_end_to_end(
    store: SqlJobStore, images: LocalImageStore, events: JobEvents, batching: Settings, tmp_path: Path
) -> None:
    from sdgate.core.models import ModelCatalog
    from sdgate.engine.null import NullEngine

    batching.batch_max = 8  # the null engine batches only when asked
    engine = NullEngine(batching, ModelCatalog(batching))
    if not callable(getattr(engine, "generate_batch", None)):
        pytest.fail("NullEngine has no generate_batch yet")
    ids = [_submit(store, f"p{i}", seed=i, batch_size=1 + i % 2) for i in range(4)]
    calls: list[int] = []
    real = engine.generate_batch

    def counted(jobs: Sequence[EngineJob]) -> list[EngineOutput | BaseException]:
        calls.append(len(jobs))
        return real(jobs)

    engine.generate_batch = counted  # type: ignore[method-assign]
    worker = Worker(store, engine, images, events, batching)  # type: ignore[arg-type]
    _run_all(worker)
    assert calls == [4]
    jobs = [store.get(job_id) for job_id in ids]
    assert all(job.state is JobState.SUCCEEDED for job in jobs)
    assert [job.result.seeds for job in jobs if job.result] == [[0], [1, 2], [2], [3, 4]]
    assert all(job.result is not None and job.result.width == 16 for job in jobs)
