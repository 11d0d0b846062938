"""The new native pieces against the real app (FakeEngine) on a loopback port: the one-request
generate, uploads, ``jobs.delete`` / ``jobs.retry`` and the all-jobs event stream (WebSocket)."""

from __future__ import annotations

import asyncio
import threading

import httpx
import pytest

from sdgate.client import AsyncClient, Client, NotFoundError
from sdgate.settings import Settings
from tests.sdk.conftest import ThreadedServer
from tests.sdk.fakes import png_bytes

SMALL = {"width": 64, "height": 64, "steps": 2}


class Recorder(httpx.HTTPTransport):
    def __init__(self) -> None:
        super().__init__()
        self.seen: list[str] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.seen.append(f"{request.method} {request.url.path}")
        return super().handle_request(request)


def test_generate_is_one_request_and_uploads_happen_once(live_server: ThreadedServer) -> None:
    recorder = Recorder()
    with Client(live_server.url, transport=recorder) as client:
        result = client.txt2img("a red circle", seed=11, n=2, **SMALL)
        assert recorder.seen == ["POST /api/v1/jobs"]
        assert result.seeds == [11, 12] and result.images[1].getpixel((0, 0)) == (12, 0, 0)
        assert result.infotexts[0].startswith("a red circle")
        init = png_bytes((5, 5, 5), (64, 64))
        recorder.seen.clear()
        first = client.img2img("x", init_image=init, seed=1, **SMALL)
        second = client.img2img("y", init_image=init, seed=2, **SMALL)
        assert recorder.seen == ["POST /api/v1/uploads", "POST /api/v1/jobs", "POST /api/v1/jobs"]
        assert first.seeds == [1] and second.seeds == [2]
        job = client.jobs.get(second.job_id)
        assert job.request["init_image"].startswith("img_")


def test_new_request_fields_run_on_the_server(live_server: ThreadedServer, sd_settings: Settings) -> None:
    sd_settings.data_dir.mkdir(parents=True, exist_ok=True)
    (sd_settings.data_dir / "styles.csv").write_text("name,prompt,negative_prompt\nink,{prompt} in ink,\n")
    with Client(live_server.url) as client:
        result = client.txt2img(
            "x", seed=3, n=1, n_iter=2, subseed=9, subseed_strength=0.5, styles=["ink"], tiling=True, **SMALL
        )
        job = client.jobs.get(result.job_id)
        # A style the server does not have is a 404, never silently skipped.
        with pytest.raises(NotFoundError, match="no style named 'nope'"):
            client.txt2img("x", styles=["nope"], **SMALL)
    assert len(result.images) == 2
    req = job.request
    assert (req["n_iter"], req["subseed"], req["subseed_strength"], req["tiling"]) == (2, 9, 0.5, True)
    assert (req["prompt"], req["styles"]) == ("x in ink", ["ink"])


def test_delete_and_retry(live_server: ThreadedServer) -> None:
    with Client(live_server.url) as client:
        done = client.txt2img("a red circle", seed=21, **SMALL)
        again = client.jobs.retry(done.job_id)
        assert again.id != done.job_id and again.request["seed"] == 21
        assert client.jobs.result(again.id).seeds == [21]
        client.jobs.delete(done.job_id)
        with pytest.raises(NotFoundError):
            client.jobs.get(done.job_id)


def test_sync_event_stream_sees_other_jobs(live_server: ThreadedServer) -> None:
    with Client(live_server.url) as client:
        seen: list = []
        connected = threading.Event()

        def listen() -> None:
            for event in client.jobs.events():
                connected.set()
                seen.append(event)
                if event.terminal:
                    break

        # the stream only speaks when something happens: submit until the listener has seen one
        listener = threading.Thread(target=listen, daemon=True)
        listener.start()
        job = None
        for _ in range(50):
            job = client.jobs.submit("a red circle", seed=1, **SMALL)
            if connected.wait(0.1):
                break
        listener.join(20)
        assert not listener.is_alive()
    assert job is not None and seen and seen[-1].terminal
    assert all(e.job_id and e.job_id.startswith("job_") for e in seen)
    assert seen[-1].kind == "succeeded"


async def test_async_event_stream(live_server: ThreadedServer) -> None:
    async with AsyncClient(live_server.url) as client:
        events = client.jobs.events()
        first = asyncio.ensure_future(anext(events))
        job_ids = []
        for _ in range(50):
            job_ids.append((await client.jobs.submit("x", seed=2, **SMALL)).id)
            done, _ = await asyncio.wait({first}, timeout=0.1)
            if done:
                break
        event = await first
        assert event.job_id in job_ids
        async for event in events:
            if event.terminal:
                break
        await events.aclose()
        assert event.terminal and event.job_id in job_ids
        await client.jobs.delete(job_ids[0])
        with pytest.raises(NotFoundError):
            await client.jobs.get(job_ids[0])
