"""Every SDK method against the real sdgate app (native ``/api/v1``, FakeEngine), in-process
through ASGITransport for AsyncClient and on a loopback port for Client; and the SDK's Stability,
OpenAI and Hugging Face backends against sdgate's own dialects of those services."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from sdgate.client import AsyncClient, Client, JobFailedError, NotFoundError, UnprocessableEntityError
from sdgate.server.app import create_app
from sdgate.settings import Settings
from tests.fakes import FakeEngine
from tests.sdk.conftest import ThreadedServer
from tests.sdk.fakes import png_bytes


async def test_async_every_method(asgi_transport: httpx.ASGITransport) -> None:
    async with AsyncClient("http://sdgate", transport=asgi_transport) as client:
        result = await client.txt2img("a red circle", seed=42, n=2, width=64, height=64, steps=3)
        assert result.seeds == [42, 43] and result.job_id and result.job_id.startswith("job_")
        assert result.images[1].getpixel((0, 0)) == (43, 0, 0)  # the fake engine paints the seed
        assert result.infotexts[0].startswith("a red circle\nSteps: 3") and "generate_s" in result.timings
        img = await client.img2img(
            "x", init_image=png_bytes(size=(64, 64)), denoising_strength=0.5, seed=1, steps=2
        )
        assert img.seeds == [1]
        inp = await client.inpaint(
            "x",
            init_image=png_bytes(size=(64, 64)),
            mask=png_bytes((255, 255, 255), (64, 64)),
            seed=2,
            steps=2,
        )
        assert inp.seeds == [2]
        assert "alpha" in [m.name for m in await client.models.list()]
        # 10 steps of 10 ms: long enough for progress (a job under PROGRESS_FIRST_S writes none)
        events = [e async for e in client.stream("a slow circle", steps=10, width=64, height=64)]
        assert [e.kind for e in events][-1] == "succeeded" and any(e.kind == "progress" for e in events)
        job = await client.jobs.submit(
            "a slow circle", steps=200, width=64, height=64, metadata={"user": "abc"}
        )
        assert (await client.jobs.get(job.id)).id == job.id
        await client.jobs.cancel(job.id)
        done = await asyncio.wait_for(client.jobs.wait(job.id), 10)
        assert done.state == "cancelled"
        with pytest.raises(JobFailedError):
            await client.jobs.result(done)
        listed = await client.jobs.list(state="cancelled")
        assert [j.id for j in listed] == [job.id]
        first = await client.jobs.list(limit=2)
        assert len(first) == 2 and first.next_cursor
        rest = await client.jobs.list(limit=100, cursor=first.next_cursor)
        assert not {j.id for j in first} & {j.id for j in rest} and rest.next_cursor is None
        with pytest.raises(NotFoundError):
            await client.jobs.get("job_nope")
        with pytest.raises(JobFailedError, match="exploded"):
            await client.txt2img("boom", width=64, height=64, steps=2)


async def test_async_validation_errors(asgi_transport: httpx.ASGITransport) -> None:
    async with AsyncClient("http://sdgate", transport=asgi_transport, max_retries=0) as client:
        with pytest.raises(UnprocessableEntityError) as info:
            await client.txt2img("x", steps=0)
        assert info.value.status == 422 and info.value.request_id


async def test_idempotency_key_makes_one_job(asgi_transport: httpx.ASGITransport) -> None:
    async with httpx.AsyncClient(transport=asgi_transport, base_url="http://sdgate") as raw:
        body = {"prompt": "same", "width": 64, "height": 64, "steps": 2}
        answers = await asyncio.gather(
            *(raw.post("/api/v1/jobs", json=body, headers={"Idempotency-Key": "k1"}) for _ in range(4))
        )
    assert len({a.json()["id"] for a in answers}) == 1


def test_sync_client_every_method(live_server: ThreadedServer) -> None:
    with Client(live_server.url) as client:
        result = client.txt2img("a red circle", seed=7, width=64, height=64, steps=2)
        assert result.seeds == [7]
        events = list(client.stream("a slow circle", width=64, height=64, steps=3))
        assert events[-1].kind == "succeeded"
        job = client.jobs.submit("x", width=64, height=64, steps=2)
        assert client.jobs.wait(job.id, timeout=10).state == "succeeded"
        assert client.jobs.result(job.id).job_id == job.id
        assert [e.kind for e in client.jobs.stream(job.id)][-1] == "succeeded"
        assert job.id in [j.id for j in client.jobs.list()]
        items = client.batch(
            [{"prompt": f"p{i}", "width": 64, "height": 64, "steps": 2} for i in range(8)], concurrency=4
        )
        assert all(it.ok for it in items)


@pytest.mark.parametrize(
    ("url", "fields", "ignored"),
    [
        ("stability+http://sdgate", {"steps": 10}, ()),
        ("stability-v2beta+http://sdgate", {}, ()),
        ("openai+http://sdgate", {"width": 64, "height": 64}, ("seed",)),
        ("hf+http://sdgate/models/alpha", {"width": 64, "height": 64, "steps": 2}, ()),
    ],
)
async def test_other_backends_against_our_own_dialects(
    asgi_transport: httpx.ASGITransport, url: str, fields: dict, ignored: tuple
) -> None:
    async with AsyncClient(url, transport=asgi_transport, max_retries=0) as client:
        result = await client.txt2img("a red circle", seed=42, **fields)
    assert len(result.images) == 1 and result.ignored_fields == ignored
    if "seed" not in ignored:
        assert result.seeds == [42]


async def test_progress_events_carry_previews(sd_settings: Settings) -> None:
    app = create_app(
        sd_settings.model_copy(update={"preview_every_n_steps": 1}), engine=FakeEngine(slow_step_s=0.02)
    )
    async with (
        app.router.lifespan_context(app),
        AsyncClient("http://sdgate", transport=httpx.ASGITransport(app=app)) as client,
    ):
        events = [e async for e in client.stream("a slow circle", steps=4, width=64, height=64)]
    previews = [e.preview for e in events if e.kind == "progress" and e.preview is not None]
    assert previews, [e.data.keys() for e in events]
