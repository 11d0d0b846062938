"""A1111 extras run as jobs: an API-only process queues them for a worker elsewhere."""

from __future__ import annotations

import asyncio
import base64
import io

import httpx
from PIL import Image

from sdgate.core.jobs import JobState
from sdgate.core.requests import PostprocessRequest
from sdgate.jobs.events import JobEvents
from sdgate.jobs.images import LocalImageStore
from sdgate.jobs.store import SqlJobStore
from sdgate.server.app import create_app
from sdgate.settings import Settings
from sdgate.worker.runner import Worker
from tests.fakes import FakeEngine


def b64(image: Image.Image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


async def test_an_api_only_process_queues_extras_for_a_worker_elsewhere(settings: Settings) -> None:
    app = create_app(settings, run_workers=False)
    body = {"image": b64(Image.new("RGB", (5, 3), "green")), "upscaler_1": "Nearest", "upscaling_resize": 2}
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://sdgate", timeout=30) as client:
            answer = asyncio.ensure_future(client.post("/sdapi/v1/extra-single-image", json=body))
            store = app.state.services.store
            for _ in range(200):  # the job waits in the queue: nothing here runs it
                queued = store.list(states=(JobState.QUEUED,))
                if queued:
                    break
                await asyncio.sleep(0.02)
            assert len(queued) == 1 and isinstance(queued[0].request, PostprocessRequest)
            assert not answer.done()
            # A worker of another process (its own store over the same data dir) runs it.
            with SqlJobStore(settings.database_url, events=JobEvents()) as other:
                worker = Worker(
                    other, FakeEngine(), LocalImageStore(settings.images_dir), JobEvents(), settings
                )
                assert await asyncio.to_thread(worker.run_once)
            r = await answer
    assert r.status_code == 200, r.text
    out = Image.open(io.BytesIO(base64.b64decode(r.json()["image"])))
    assert out.size == (10, 6) and out.convert("RGB").getpixel((9, 5)) == (0, 128, 0)
    assert r.json()["html_info"] == "" and "parameters" not in out.info


async def test_extras_jobs_are_not_a1111_progress(client: httpx.AsyncClient) -> None:
    """``/progress`` follows generations only, as A1111's: an extras job leaves it idle."""
    body = {"imageList": [{"data": b64(Image.new("RGB", (4, 4)))}] * 2, "upscaler_1": "Lanczos"}
    r = await client.post("/sdapi/v1/extra-batch-images", json=body)
    assert r.status_code == 200 and len(r.json()["images"]) == 2
    progress = (await client.get("/sdapi/v1/progress")).json()
    assert progress["state"]["job_count"] == 0 and progress["textinfo"] is None
    r = await client.post("/sdapi/v1/extra-batch-images", json={"imageList": []})
    assert r.status_code == 200 and r.json()["images"] == []
