"""``GET /api/v1/jobs/{id}/events?include=images``: the ``succeeded`` event's job carries each
image's file inline, so a client following a job's progress needs no GET per image."""

from __future__ import annotations

import asyncio
import base64
import json

import httpx

from sdgate.core.jobs import JobEventKind
from sdgate.server.dialects.native import jobs as native_jobs
from sdgate.server.dialects.native.events import sse_message
from sdgate.server.runtime import get_runtime
from tests.server.dialects.native.conftest import parse_sse, read_sse, wait_state

BODY = {"prompt": "a slow circle", "width": 64, "height": 64, "steps": 4, "seed": 7, "batch_size": 2}


async def read_sse_with(api: httpx.AsyncClient, job_id: str, params: dict[str, str]) -> list[dict]:
    async with asyncio.timeout(20):
        response = await api.get(f"/api/v1/jobs/{job_id}/events", params=params)
    assert response.status_code == 200, response.text
    return parse_sse(response.text)


async def test_the_succeeded_event_carries_the_images(api: httpx.AsyncClient) -> None:
    job = (await api.post("/api/v1/jobs", json=BODY)).json()
    events = await read_sse_with(api, job["id"], {"include": "images"})
    assert events[-1]["event"] == "succeeded" and any(e["event"] == "progress" for e in events)
    rows = events[-1]["data"]["result"]["images"]
    assert [r["seed"] for r in rows] == [7, 8]
    for row in rows:
        assert base64.b64decode(row["data"]) == (await api.get(row["url"])).content
    # everything but the files is what the stream sends without the option
    plain = await read_sse(api, job["id"], {"Last-Event-ID": "0"})
    assert plain[-1]["data"]["result"]["images"][0]["data"] is None
    stripped = json.loads(json.dumps(events[-1]))
    for row in stripped["data"]["result"]["images"]:
        row["data"] = None
    assert stripped == plain[-1]
    assert [e["data"] for e in events[:-1]] == [e["data"] for e in plain[-len(events) : -1]]


async def test_a_late_joiner_and_a_resumed_stream_get_them_too(api: httpx.AsyncClient) -> None:
    job = (await api.post("/api/v1/jobs", json={**BODY, "prompt": "x", "steps": 2})).json()
    await wait_state(api, job["id"])
    (only,) = await read_sse_with(api, job["id"], {"include": "images"})
    assert only["event"] == "succeeded" and all(r["data"] for r in only["data"]["result"]["images"])
    async with asyncio.timeout(20):
        resumed = await api.get(
            f"/api/v1/jobs/{job['id']}/events", params={"include": "images"}, headers={"Last-Event-ID": "1"}
        )
    last = parse_sse(resumed.text)[-1]
    assert last["event"] == "succeeded" and all(r["data"] for r in last["data"]["result"]["images"])


async def test_a_failed_job_ends_the_same_and_bad_values_are_refused(api: httpx.AsyncClient) -> None:
    failed = (await api.post("/api/v1/jobs", json={"prompt": "boom", "steps": 2})).json()
    events = await read_sse_with(api, failed["id"], {"include": "images"})
    assert events[-1]["event"] == "failed" and events[-1]["data"]["result"] is None
    bad = await api.get(f"/api/v1/jobs/{failed['id']}/events", params={"include": "thumbnails"})
    assert bad.status_code == 422


async def test_inline_event_images_touches_only_a_succeeded_event(api: httpx.AsyncClient) -> None:
    job = (await api.post("/api/v1/jobs", json={**BODY, "prompt": "x", "batch_size": 1})).json()
    done = await wait_state(api, job["id"])
    runtime = get_runtime(api.app.state.services)  # type: ignore[attr-defined]
    image = done["result"]["images"][0]
    gone = {**image, "id": "img_" + "f" * 24}
    data = {**done, "result": {**done["result"], "images": [image, gone]}}
    out = native_jobs.inline_event_images(runtime, sse_message(JobEventKind.SUCCEEDED, data, 12))
    assert out.startswith("id: 12\nevent: succeeded\ndata: ") and out.endswith("\n\n")
    (event,) = parse_sse(out)
    first, missing = event["data"]["result"]["images"]
    assert base64.b64decode(first["data"]) == (await api.get(image["url"])).content
    assert missing["data"] is None  # gone from the store: the client still has the URL
    progress = sse_message(JobEventKind.PROGRESS, {"job_id": job["id"], "step": 1, "total": 2}, 3)
    assert native_jobs.inline_event_images(runtime, progress) == progress


async def test_the_openapi_documents_the_option(api: httpx.AsyncClient) -> None:
    route = (await api.get("/openapi.json")).json()["paths"]["/api/v1/jobs/{job_id}/events"]["get"]
    assert "include" in {p["name"] for p in route["parameters"]}
    assert "?include=images" in route["description"]
