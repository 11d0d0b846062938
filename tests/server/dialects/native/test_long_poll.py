"""``?wait=`` (a long poll) and ``?include=images`` on ``POST /api/v1/jobs`` and ``GET /api/v1/jobs/{id}``."""

from __future__ import annotations

import base64
import io
import time

import httpx
from PIL import Image

from tests.fakes import FakeEngine
from tests.server.dialects.native.conftest import serve, wait_state

BODY = {"prompt": "a red circle", "width": 64, "height": 64, "steps": 2, "seed": 7}


async def test_submit_with_wait_answers_with_the_finished_job_and_its_images(api: httpx.AsyncClient) -> None:
    r = await api.post("/api/v1/jobs", params={"wait": 20, "include": "images"}, json=BODY)
    assert r.status_code == 202, r.text
    job = r.json()
    assert job["state"] == "succeeded"
    image = job["result"]["images"][0]
    raw = base64.b64decode(image["data"])
    assert raw == (await api.get(image["url"])).content
    assert Image.open(io.BytesIO(raw)).size == (64, 64)


async def test_without_include_no_image_data_and_without_wait_no_waiting(
    native_settings, engine: FakeEngine
) -> None:
    engine.slow_step_s = 0.5
    async with serve(native_settings, engine) as api:
        # The default is still "answer at once": the answer comes before the job (20 steps of 0.5 s)
        # could have ended, whatever the machine's load.
        r = await api.post("/api/v1/jobs", json={**BODY, "prompt": "slow", "steps": 20})
        assert r.status_code == 202 and r.json()["state"] in ("queued", "running")
        cancel = await api.post(f"/api/v1/jobs/{r.json()['id']}/cancel")
        assert cancel.status_code in (200, 202)
        r = await api.post("/api/v1/jobs", json={**BODY, "prompt": "fast"})
        done = await wait_state(api, r.json()["id"])
        assert done["result"]["images"][0]["data"] is None


async def test_get_with_wait_returns_when_the_job_ends(native_settings, engine: FakeEngine) -> None:
    engine.slow_step_s = 0.1
    async with serve(native_settings, engine) as api:
        job = (await api.post("/api/v1/jobs", json={**BODY, "prompt": "slow", "steps": 3})).json()
        r = await api.get(f"/api/v1/jobs/{job['id']}", params={"wait": 20, "include": "images"})
        assert r.status_code == 200
        assert r.json()["state"] == "succeeded"
        assert r.json()["result"]["images"][0]["data"]


async def test_wait_gives_up_after_n_seconds_with_the_job_as_it_is(
    native_settings, engine: FakeEngine
) -> None:
    engine.slow_step_s = 0.5
    async with serve(native_settings, engine) as api:
        job = (await api.post("/api/v1/jobs", json={**BODY, "prompt": "slow", "steps": 6})).json()
        start = time.monotonic()
        r = await api.get(f"/api/v1/jobs/{job['id']}", params={"wait": 0.3})
        assert 0.25 < time.monotonic() - start < 2.5
        assert r.json()["state"] in ("queued", "running")
        await api.post(f"/api/v1/jobs/{job['id']}/cancel")
        await wait_state(api, job["id"])


async def test_wait_and_include_are_checked(api: httpx.AsyncClient) -> None:
    assert (await api.post("/api/v1/jobs", params={"wait": 61}, json=BODY)).status_code == 422
    assert (await api.post("/api/v1/jobs", params={"wait": -1}, json=BODY)).status_code == 422
    r = await api.get("/api/v1/jobs/job_nope", params={"include": "thumbnails"})
    assert r.status_code == 422


async def test_the_openapi_documents_both(api: httpx.AsyncClient) -> None:
    spec = (await api.get("/openapi.json")).json()
    for path, method in (("/api/v1/jobs", "post"), ("/api/v1/jobs/{job_id}", "get")):
        names = {p["name"] for p in spec["paths"][path][method]["parameters"]}
        assert {"wait", "include"} <= names
    assert "data" in spec["components"]["schemas"]["ImageOut"]["properties"]
