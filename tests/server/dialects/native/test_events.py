"""Live events: SSE order, late joiners, Last-Event-ID resume, previews, WebSocket fan-out."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
import websockets

from sdgate.core.jobs import Job
from sdgate.server.app import create_app
from sdgate.server.dialects.native.events import parse_last_event_id
from sdgate.server.runtime import ServerRuntime
from tests.fakes import FakeEngine
from tests.harness import ThreadServer
from tests.server.dialects.native.conftest import (
    parse_sse,
    read_sse,
    serve,
    wait_state,
)


async def test_sse_stream_order_ends_after_the_terminal_event(api: httpx.AsyncClient) -> None:
    job = (await api.post("/api/v1/jobs", json={"prompt": "slow", "steps": 10})).json()
    events = await read_sse(api, job["id"])
    kinds = [e["event"] for e in events]
    assert kinds[0] in ("queued", "started", "progress") and kinds[-1] == "succeeded"
    assert kinds.count("succeeded") == 1
    ids = [e["id"] for e in events]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    progress = [e["data"] for e in events if e["event"] == "progress"]
    assert [p["step"] for p in progress] == sorted(p["step"] for p in progress)
    assert all(set(p) >= {"job_id", "step", "total", "eta_s"} for p in progress)
    final = events[-1]["data"]
    assert final["job_id"] == job["id"] and final["result"]["images"]


async def test_late_joiner_gets_the_current_state_first(api: httpx.AsyncClient) -> None:
    job = (await api.post("/api/v1/jobs", json={"prompt": "x", "steps": 2})).json()
    await wait_state(api, job["id"])
    events = await read_sse(api, job["id"])
    assert [e["event"] for e in events] == ["succeeded"]  # one event: the state now, then the end


async def test_last_event_id_replays_what_followed(api: httpx.AsyncClient) -> None:
    job = (await api.post("/api/v1/jobs", json={"prompt": "slow", "steps": 8})).json()
    await wait_state(api, job["id"])
    full = await read_sse(api, job["id"], {"Last-Event-ID": "0"})
    assert [e["event"] for e in full][0] == "queued" and full[-1]["event"] == "succeeded"
    assert "started" in [e["event"] for e in full]
    middle = full[1]["id"]
    rest = await read_sse(api, job["id"], {"Last-Event-ID": str(middle)})
    assert rest == full[2:]
    bad = await api.get(f"/api/v1/jobs/{job['id']}/events", headers={"Last-Event-ID": "x"})
    assert bad.status_code == 400 and bad.json()["error"]["field"] == "Last-Event-ID"
    assert (await api.get("/api/v1/jobs/job_nope/events")).status_code == 404


async def test_cancelled_and_failed_streams_end(api: httpx.AsyncClient) -> None:
    failed = (await api.post("/api/v1/jobs", json={"prompt": "boom", "steps": 2})).json()
    assert (await read_sse(api, failed["id"]))[-1]["event"] == "failed"
    running = (await api.post("/api/v1/jobs", json={"prompt": "slow", "steps": 500})).json()
    await wait_state(api, running["id"], ("running",))
    reader = asyncio.create_task(read_sse(api, running["id"]))
    await asyncio.sleep(0.1)
    await api.post(f"/api/v1/jobs/{running['id']}/cancel")
    events = await reader
    assert events[-1]["event"] == "cancelled" and events[-1]["data"]["state"] == "cancelled"


def test_sse_streams_live_over_uvicorn_and_resumes(live_api: ThreadServer) -> None:
    with httpx.Client(base_url=live_api.url, timeout=30) as client:
        job = client.post("/api/v1/jobs", json={"prompt": "slow", "steps": 40}).json()
        seen: list[dict] = []
        with client.stream("GET", f"/api/v1/jobs/{job['id']}/events") as response:
            buffer = ""
            for chunk in response.iter_text():
                buffer += chunk
                seen = parse_sse(buffer)
                if any(e["event"] == "progress" for e in seen):
                    break  # drop the connection mid-job
        assert seen and seen[-1]["event"] not in ("succeeded", "failed", "cancelled")
        resumed = parse_sse(client.get(f"/api/v1/jobs/{job['id']}/events",
                                       headers={"Last-Event-ID": str(seen[-1]["id"])}).text)
        assert resumed[-1]["event"] == "succeeded"
        assert all(e["id"] > seen[-1]["id"] for e in resumed)


async def test_websocket_fans_out_to_two_clients(live_api: ThreadServer) -> None:
    url = live_api.url.replace("http", "ws") + "/api/v1/events"
    async with websockets.connect(url) as one, websockets.connect(url) as two:
        for ws in (one, two):
            assert json.loads(await ws.recv())["event"] == "hello"
        async with httpx.AsyncClient(base_url=live_api.url) as client:
            job = (await client.post("/api/v1/jobs", json={"prompt": "x", "steps": 3})).json()

        async def until_done(ws: websockets.ClientConnection) -> list[str]:
            kinds = []
            async with asyncio.timeout(20):
                while True:
                    message = json.loads(await ws.recv())
                    if message["data"]["job_id"] == job["id"]:
                        kinds.append(message["event"])
                    if message["event"] == "succeeded":
                        return kinds

        first, second = await asyncio.gather(until_done(one), until_done(two))
        assert first == second and first[0] == "queued" and first[-1] == "succeeded"


async def test_progress_carries_previews_every_n_steps(native_settings, engine) -> None:
    async with serve(native_settings, engine, preview_every_n_steps=2) as api:
        job = (await api.post("/api/v1/jobs", json={"prompt": "slow", "steps": 60})).json()
        # Read live (from the first event on) so the worker is mid-job when progress arrives.
        events = await read_sse(api, job["id"], {"Last-Event-ID": "0"})
    previews = [e["data"]["preview"] for e in events if e["event"] == "progress" and "preview" in e["data"]]
    assert previews and previews[0].startswith("data:image/webp;base64,")


async def test_a_stream_may_ask_for_previews_itself(native_settings, engine) -> None:
    """``?previews=N`` (the web UI's) on a server whose default is none; out of range is a 400."""
    async with serve(native_settings, engine) as api:
        assert (await api.get("/api/v1/jobs/x/events?previews=0")).status_code in (400, 422)
        job = (await api.post("/api/v1/jobs", json={"prompt": "slow", "steps": 60})).json()
        plain = await read_sse(api, job["id"], {"Last-Event-ID": "0"})
        job = (await api.post("/api/v1/jobs", json={"prompt": "slow", "steps": 60})).json()
        async with asyncio.timeout(20):
            response = await api.get(f"/api/v1/jobs/{job['id']}/events?previews=1",
                                     headers={"Last-Event-ID": "0"})
        asked = parse_sse(response.text)
    assert not any("preview" in e["data"] for e in plain if e["event"] == "progress")
    previews = [e["data"]["preview"] for e in asked if e["event"] == "progress" and "preview" in e["data"]]
    assert previews and previews[0].startswith("data:image/webp;base64,")


@pytest.mark.parametrize(("value", "expected"), [(None, None), ("", None), ("12", 12)])
def test_parse_last_event_id(value: str | None, expected: int | None) -> None:
    assert parse_last_event_id(value) == expected


async def test_retention_drops_old_progress_events_but_keeps_states(api: httpx.AsyncClient) -> None:
    from datetime import UTC, datetime, timedelta

    from sdgate.jobs.retention import Retention

    job = (await api.post("/api/v1/jobs", json={"prompt": "slow", "steps": 10})).json()
    await wait_state(api, job["id"])
    before = [e["event"] for e in await read_sse(api, job["id"], {"Last-Event-ID": "0"})]
    assert "progress" in before
    services = api.app.state.services  # type: ignore[attr-defined]
    later = datetime.now(UTC) + timedelta(hours=2)
    Retention(services.store, services.images, ttl_s=None).run_once(now=later)
    after = [e["event"] for e in await read_sse(api, job["id"], {"Last-Event-ID": "0"})]
    assert after == [e for e in before if e != "progress"] and after[-1] == "succeeded"


async def test_a_long_stream_closes_and_resumes_where_it_stopped(api: httpx.AsyncClient) -> None:
    from sdgate.server.dialects.native.events import job_stream

    job = (await api.post("/api/v1/jobs", json={"prompt": "slow", "steps": 40})).json()
    runtime = api.app.state.services.state.get(ServerRuntime)  # type: ignore[attr-defined]
    stream = job_stream(runtime, await _stored_job(api, job["id"]), 0, poll_s=0.05, max_s=0.2)
    first = parse_sse("".join([chunk async for chunk in stream]))
    assert first and first[-1]["event"] not in ("succeeded", "failed", "cancelled")
    last_id = max(e["id"] or 0 for e in first)
    rest = await read_sse(api, job["id"], {"Last-Event-ID": str(last_id)})
    assert rest[-1]["event"] == "succeeded" and rest[0]["id"] > last_id


async def _stored_job(api: httpx.AsyncClient, job_id: str) -> Job:
    services = api.app.state.services  # type: ignore[attr-defined]
    return services.store.get(job_id)


async def test_a_job_run_by_another_process_still_streams(
    native_settings, engine: FakeEngine, monkeypatch: pytest.MonkeyPatch  # noqa: ANN001
) -> None:
    """An API-only server (no workers) streams jobs that a separate worker runs, by polling the
    job row: its events never reach this process's event log."""
    from sdgate.jobs.events import JobEvents
    from sdgate.jobs.images import LocalImageStore
    from sdgate.jobs.store import SqlJobStore
    from sdgate.server.dialects.native import events as native_events
    from sdgate.worker.runner import Worker

    monkeypatch.setattr(native_events, "POLL_S", 0.05)
    app = create_app(native_settings, run_workers=False)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t", timeout=30) as api:
            job = (await api.post("/api/v1/jobs", json={"prompt": "slow", "steps": 30})).json()
            reader = asyncio.create_task(read_sse(api, job["id"]))
            await asyncio.sleep(0.2)
            elsewhere = JobEvents()
            store = SqlJobStore(native_settings.database_url, events=elsewhere)
            worker = Worker(store, engine, LocalImageStore(native_settings.images_dir), elsewhere,
                            native_settings, worker_id="elsewhere")
            worker.start()
            try:
                events = await reader
            finally:
                worker.stop(timeout=10)
                store.close()
    kinds = [e["event"] for e in events]
    assert kinds[0] == "queued" and kinds[-1] == "succeeded" and "progress" in kinds
    assert "started" in kinds or kinds.index("progress") == 1
    steps = [e["data"]["step"] for e in events if e["event"] == "progress"]
    assert steps == sorted(set(steps))
