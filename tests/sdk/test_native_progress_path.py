"""Requests per generation with progress listeners: submit + the SSE stream, whose terminal event
brings the images (``GET /jobs/{id}/events?include=images``); older servers cost a GET per image."""

from __future__ import annotations

import threading
from typing import Any

import httpx
import pytest

from sdgate.client import AsyncClient, Client
from sdgate.settings import Settings
from tests.sdk.fakes import FakeNative


def client_for(native: FakeNative) -> Client:
    return Client("http://sdgate.test", transport=native.transport)


def paths(native: FakeNative) -> list[str]:
    return [f"{r.method} {r.url.path}" for r in native.requests]


def events_params(native: FakeNative) -> list[list[str]]:
    return [r.url.params.get_list("include") for r in native.requests if r.url.path.endswith("/events")]


def test_listeners_cost_two_requests_when_the_stream_brings_the_images() -> None:
    native = FakeNative(steps=2, long_poll=True, sse_jobs=True, sse_images=True)
    events: list = []
    result = client_for(native).txt2img("x", seed=3, n=2, on_progress=events.append)
    assert paths(native) == ["POST /api/v1/jobs", "GET /api/v1/jobs/job_0001/events"]
    assert events_params(native) == [["images"]]
    assert result.seeds == [3, 4] and result.infotexts == ["x\nSeed: 3", "x\nSeed: 4"]
    assert result.images[1].size == (8, 8) and result.job_id == "job_0001"
    assert [e.kind for e in events][-1] == "succeeded"


def test_stream_takes_the_same_path() -> None:
    native = FakeNative(steps=1, sse_jobs=True, sse_images=True)
    events = list(client_for(native).stream("x", seed=1))
    assert [e.kind for e in events][-1] == "succeeded"
    assert paths(native) == ["POST /api/v1/jobs", "GET /api/v1/jobs/job_0001/events"]


@pytest.mark.parametrize(
    ("sse_jobs", "extra"),
    [
        # the terminal event carries the job but ignores ?include=images: a GET per image
        (True, []),
        # the terminal event is bare (an older server): the job once more, then a GET per image
        (False, ["GET /api/v1/jobs/job_0001"]),
    ],
)
def test_older_servers_still_work_with_a_get_per_image(sse_jobs: bool, extra: list[str]) -> None:
    native = FakeNative(steps=1, sse_jobs=sse_jobs, sse_images=False)
    result = client_for(native).txt2img("x", seed=1, n=2, on_progress=lambda e: None)
    assert result.seeds == [1, 2] and result.infotexts == ["x\nSeed: 1", "x\nSeed: 2"]
    assert paths(native) == [
        "POST /api/v1/jobs",
        "GET /api/v1/jobs/job_0001/events",
        *extra,
        "GET /api/v1/images/img_job_0001_0",
        "GET /api/v1/images/img_job_0001_1",
    ]


def test_polling_asks_for_the_images_inline_too() -> None:
    native = FakeNative(steps=1, sse=False, long_poll=True)  # no SSE here: poll the job
    result = client_for(native).txt2img("x", seed=1, on_progress=lambda e: None)
    assert result.seeds == [1]
    polls = [r for r in native.requests if r.url.path == "/api/v1/jobs/job_0001"]
    assert polls and all(r.url.params.get_list("include") == ["images"] for r in polls)
    assert not [p for p in paths(native) if "/images/" in p]


def test_jobs_result_waits_with_the_images_inline_but_jobs_wait_does_not() -> None:
    native = FakeNative(steps=1, sse_jobs=True, sse_images=True)
    client = client_for(native)
    job = client.jobs.submit("x", seed=1)
    done = client.jobs.wait(job.id)
    assert events_params(native) == [[]] and not done.result["images"][0].get("data")
    again = client.jobs.submit("y", seed=2)
    assert client.jobs.result(again.id).seeds == [2]
    assert events_params(native) == [[], ["images"]]
    assert not [p for p in paths(native) if "/images/" in p]


async def test_async_client_takes_the_same_path() -> None:
    native = FakeNative(steps=2, sse_jobs=True, sse_images=True)
    async with AsyncClient("http://sdgate.test", transport=native.transport) as client:
        events: list = []
        result = await client.txt2img("x", seed=5, on_progress=events.append)
        assert result.seeds == [5] and events[-1].kind == "succeeded"
        assert (await client.jobs.result((await client.jobs.submit("y", seed=6)).id)).seeds == [6]
    assert [p for p in paths(native) if "/images/" in p] == []
    assert events_params(native) == [["images"], ["images"]]


async def test_against_the_real_app(sd_settings: Settings) -> None:
    """The real server's SSE stream with ``?include=images``: no GET of any image."""
    from sdgate.server.app import create_app
    from tests.fakes import FakeEngine

    stream_opened = threading.Event()

    class GatedEngine(FakeEngine):
        """Starts drawing only once the client has opened the job's event stream, so the
        progress events cannot all pass before anyone listens (a race on a loaded machine)."""

        def generate(self, *args: Any, **kwargs: Any) -> Any:
            stream_opened.wait(30)
            return super().generate(*args, **kwargs)

    app = create_app(sd_settings, engine=GatedEngine(slow_step_s=0.05))  # "a slow circle": 50 ms a step
    seen: list[str] = []

    class Counting(httpx.ASGITransport):
        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            seen.append(f"{request.method} {request.url.path}")
            if request.url.path.endswith("/events"):
                stream_opened.set()
            return await super().handle_async_request(request)

    async with (
        app.router.lifespan_context(app),
        AsyncClient("http://sdgate", transport=Counting(app=app)) as client,
    ):
        events: list = []
        result = await client.txt2img(
            "a slow circle", seed=7, n=2, width=64, height=64, steps=3, on_progress=events.append
        )
    assert result.seeds == [7, 8] and result.images[1].getpixel((0, 0)) == (8, 0, 0)
    assert any(e.kind == "progress" for e in events) and events[-1].kind == "succeeded"
    assert seen == ["POST /api/v1/jobs", f"GET /api/v1/jobs/{result.job_id}/events"]
