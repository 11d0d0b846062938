"""A full disk seen through every dialect: a 507 in the dialect's own error shape naming what is
full, ``/readyz`` not ready with the reason meanwhile, a job whose images cannot be stored failed,
and service back by itself once space returns.

The faults are injected where no real part here shows them on demand: SQLite's "database or disk
is full" at the DBAPI call (``DiskFull``), ENOSPC from the OS call that writes image bytes.
"""

from __future__ import annotations

import errno
import io
import os
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from PIL import Image

from sdgate.server.app import create_app
from sdgate.server.services import Services
from sdgate.settings import Settings
from tests.fakes import FakeEngine
from tests.jobs.faults import DiskFull

DB_FULL = "storage full: could not write the job database (database or disk is full)"
IMAGES_FULL = "storage full: could not write an image (No space left on device)"


class Server:
    def __init__(self, client: httpx.AsyncClient, services: Services) -> None:
        self.client = client
        self.services = services
        self.disk = DiskFull(services.store.database)


@pytest.fixture
async def server(settings: Settings) -> AsyncIterator[Server]:
    app = create_app(settings, engine=FakeEngine())
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://sdgate", timeout=30) as client:
            yield Server(client, app.state.services)


@pytest.fixture
def images_full(monkeypatch: pytest.MonkeyPatch) -> Any:
    """Call it to fill the image disk; ``monkeypatch.undo`` (or the test's end) frees it."""
    def no_space(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    return lambda: monkeypatch.setattr(os, "fsync", no_space)


def _png() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (64, 64), "red").save(out, format="PNG")
    return out.getvalue()


# (route, body, where the message is in the dialect's error body)
SUBMITS: list[tuple[str, dict[str, Any], Any]] = [
    ("/api/v1/jobs", {"prompt": "a"}, lambda b: (b["error"]["code"], b["error"]["message"])),
    ("/sdapi/v1/txt2img", {"prompt": "a", "steps": 2}, lambda b: (b["error"], b["detail"])),
    ("/v1/images/generations", {"prompt": "a"}, lambda b: (b["error"]["code"], b["error"]["message"])),
    (
        "/v1/generation/stable-diffusion-v1-6/text-to-image",
        {"text_prompts": [{"text": "a"}], "steps": 10},
        lambda b: (b["name"], b["message"]),
    ),
    ("/models/stabilityai/stable-diffusion-xl-base-1.0", {"inputs": "a"}, lambda b: (None, b["error"])),
]
EXPECTED_KIND = ["storage_full", "StorageFull", "storage_full", "server_error", None]


async def test_a_full_database_is_a_507_in_every_dialect_and_readyz_follows(server: Server) -> None:
    client = server.client
    assert (await client.get("/readyz")).status_code == 200
    server.disk.on = True

    for (route, body, read), kind in zip(SUBMITS, EXPECTED_KIND, strict=True):
        response = await client.post(route, json=body)
        assert response.status_code == 507, (route, response.text)
        got_kind, message = read(response.json())
        assert got_kind == kind, route
        assert DB_FULL in message, route

    ready = await client.get("/readyz")
    assert ready.status_code == 503
    assert ready.json()["ready"] is False and ready.json()["reason"] == DB_FULL
    assert ready.json()["checks"]["storage"] == DB_FULL
    assert (await client.get("/healthz")).status_code == 200  # alive, just not ready
    assert (await client.get("/api/v1/jobs")).status_code == 200  # reads still answer

    # Space returns: the probe write in /readyz sees it, and submits work again.
    server.disk.on = False
    ready = await client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["checks"]["storage"] == "ok"
    response = await client.post("/sdapi/v1/txt2img", json={"prompt": "a", "steps": 2})
    assert response.status_code == 200 and len(response.json()["images"]) == 1


async def test_a_full_image_disk_fails_the_job_and_refuses_uploads(server: Server, images_full: Any,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    client = server.client
    images_full()

    # A blocking route waits for its job, which the worker failed: images could not be stored.
    response = await client.post("/sdapi/v1/txt2img", json={"prompt": "a", "steps": 2})
    assert response.status_code == 507
    assert response.json()["error"] == "StorageFull" and response.json()["detail"] == IMAGES_FULL
    jobs = (await client.get("/api/v1/jobs")).json()["jobs"]
    assert jobs[0]["state"] == "failed" and jobs[0]["error"]["code"] == "storage_full"

    upload = await client.post("/api/v1/uploads", content=_png(), headers={"content-type": "image/png"})
    assert upload.status_code == 507 and upload.json()["error"]["message"] == IMAGES_FULL
    ready = await client.get("/readyz")
    assert ready.status_code == 503 and ready.json()["reason"] == IMAGES_FULL

    monkeypatch.undo()
    assert (await client.get("/readyz")).status_code == 200
    upload = await client.post("/api/v1/uploads", content=_png(), headers={"content-type": "image/png"})
    assert upload.status_code == 201


async def test_comfyui_uploads_and_prompts_on_a_full_disk(server: Server, images_full: Any,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """ComfyUI's routes answer a full disk as the others do: a 507 in its error shape naming what is
    full, nothing recorded, and uploads work again once there is room."""
    from tests import comfy_graphs

    client = server.client
    upload = {"image": ("full.png", _png(), "image/png")}
    images_full()
    r = await client.post("/upload/image", files=upload)
    assert r.status_code == 507, r.text
    assert r.json()["error"]["type"] == "storage_full" and r.json()["error"]["message"] == IMAGES_FULL
    monkeypatch.undo()

    server.disk.on = True
    r = await client.post("/upload/image", files=upload)  # the bytes fit; the file's row does not
    assert r.status_code == 507 and r.json()["error"]["message"] == DB_FULL, r.text
    graph = comfy_graphs.txt2img("alpha.safetensors", width=64, height=64, steps=2)
    r = await client.post("/prompt", json={"prompt": graph})
    assert r.status_code == 507 and r.json()["error"]["message"] == DB_FULL, r.text
    server.disk.on = False

    assert (await client.get("/view", params={"filename": "full.png", "type": "input"})).status_code == 404
    r = await client.post("/upload/image", files=upload)
    assert r.status_code == 200 and r.json()["name"] == "full.png", r.text
    assert (await client.get("/view", params={"filename": "full.png", "type": "input"})).status_code == 200
    assert (await client.post("/prompt", json={"prompt": graph})).status_code == 200
