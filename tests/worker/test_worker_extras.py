"""Extras (postprocess) jobs on a worker: stored through the store, run beside the engine's jobs."""

from __future__ import annotations

import io
import time
from collections.abc import Callable

from PIL import Image

from sdgate.core.images import encode_png
from sdgate.core.jobs import Job, JobState
from sdgate.core.requests import GenerationRequest, PostprocessRequest
from sdgate.jobs.images import LocalImageStore
from sdgate.jobs.store import SqlJobStore
from sdgate.worker.runner import Worker
from tests.fakes import FakeEngine

MakeWorker = Callable[..., Worker]


def finished(store: SqlJobStore, job_id: str, timeout: float = 10) -> Job:
    deadline = time.monotonic() + timeout
    while (job := store.get(job_id)).state not in (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED):
        assert time.monotonic() < deadline, f"{job_id} is still {job.state.value}"
        time.sleep(0.01)
    return job


def put(images: LocalImageStore, size: tuple[int, int], colour: str = "red") -> str:
    return images.put(encode_png(Image.new("RGB", size, colour)), content_type="image/png")


def test_an_extras_job_round_trips_through_the_store_and_runs(
    store: SqlJobStore, images: LocalImageStore, make_worker: MakeWorker
) -> None:
    engine = FakeEngine()
    make_worker(engine)
    ids = (put(images, (10, 6)), put(images, (4, 4), "blue"))
    request = PostprocessRequest(init_images=ids, scale=3, upscaler_1="Nearest")
    submitted = store.submit(request, dialect="a1111-extras")
    assert store.get(submitted.id).request == request  # the stored JSON reads back as a postprocess
    job = finished(store, submitted.id)
    assert job.state is JobState.SUCCEEDED, job.error
    assert job.result is not None and engine.calls == []  # the engine drew nothing
    pictures = [Image.open(io.BytesIO(images.get(s.id))) for s in job.result.images]
    assert [p.size for p in pictures] == [(30, 18), (12, 12)]
    assert [p.convert("RGB").getpixel((0, 0)) for p in pictures] == [(255, 0, 0), (0, 0, 255)]
    assert all("parameters" not in p.info for p in pictures)  # extras answer without an infotext
    # A generation after it runs on the engine as before.
    after = finished(store, store.submit(GenerationRequest(prompt="x")).id)
    assert after.state is JobState.SUCCEEDED and len(engine.calls) == 1


def test_to_size_with_crop_and_a_blended_second_upscaler(
    store: SqlJobStore, images: LocalImageStore, make_worker: MakeWorker
) -> None:
    make_worker(FakeEngine())
    request = PostprocessRequest(
        init_images=(put(images, (30, 20)),), resize_mode=1, width=64, height=64, crop=True,
        upscaler_1="Lanczos", upscaler_2="Nearest", upscaler_2_visibility=0.5,
    )  # fmt: skip
    job = finished(store, store.submit(request).id)
    assert job.state is JobState.SUCCEEDED, job.error
    assert job.result is not None and (job.result.images[0].width, job.result.images[0].height) == (64, 64)


def test_a_missing_input_fails_the_job_naming_the_field(store: SqlJobStore, make_worker: MakeWorker) -> None:
    make_worker(FakeEngine())
    job = finished(store, store.submit(PostprocessRequest(init_images=("nope",))).id)
    assert job.state is JobState.FAILED and job.error is not None
    assert job.error["code"] == "not_found" and job.error.get("field") == "init_images", job.error


def test_an_unknown_model_upscaler_fails_the_job_with_a_400(
    store: SqlJobStore, images: LocalImageStore, make_worker: MakeWorker
) -> None:
    make_worker(FakeEngine())
    request = PostprocessRequest(init_images=(put(images, (8, 8)),), upscaler_1="no-such-file")
    job = finished(store, store.submit(request).id)
    assert job.state is JobState.FAILED and job.error is not None
    assert "no-such-file" in job.error["message"] and job.error.get("field") == "upscaler_1", job.error
