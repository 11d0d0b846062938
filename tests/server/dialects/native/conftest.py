"""Native API fixtures: the app over the fake engine, plus helpers to wait and to read SSE."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from PIL import Image

from sdgate.server.app import create_app
from sdgate.settings import Settings
from tests.fakes import FakeEngine
from tests.harness import ThreadServer

TERMINAL = ("succeeded", "failed", "cancelled")


def png_b64(colour: str = "red", size: tuple[int, int] = (64, 64), mode: str = "RGB") -> str:
    out = io.BytesIO()
    Image.new(mode, size, colour).save(out, format="PNG")
    return base64.b64encode(out.getvalue()).decode()


async def wait_state(client: httpx.AsyncClient, job_id: str, states: tuple[str, ...] = TERMINAL,
                     timeout: float = 20) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        body = (await client.get(f"/api/v1/jobs/{job_id}")).json()
        if body["state"] in states:
            return body
        if time.monotonic() > deadline:
            raise AssertionError(f"job {job_id} stayed {body['state']}")
        await asyncio.sleep(0.02)


async def submit(client: httpx.AsyncClient, **body: Any) -> dict[str, Any]:
    """``POST /api/v1/jobs``, expecting 202."""
    response = await client.post("/api/v1/jobs", json=body)
    assert response.status_code == 202, response.text
    return dict(response.json())


def parse_sse(text: str) -> list[dict[str, Any]]:
    """``[{"id", "event", "data"}]`` of a complete SSE body."""
    events = []
    for block in text.split("\n\n"):
        fields: dict[str, Any] = {}
        for line in block.splitlines():
            name, _, value = line.partition(": ")
            if name in ("id", "event", "data"):
                fields[name] = value
        if "event" in fields:
            fields["data"] = json.loads(fields["data"])
            fields["id"] = int(fields["id"]) if "id" in fields else None
            events.append(fields)
    return events


async def read_sse(client: httpx.AsyncClient, job_id: str, headers: dict[str, str] | None = None,
                   timeout: float = 20) -> list[dict[str, Any]]:
    async with asyncio.timeout(timeout):
        response = await client.get(f"/api/v1/jobs/{job_id}/events", headers=headers or {})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/event-stream")
    return parse_sse(response.text)


@pytest.fixture
def native_settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"allow_private_callbacks": True, "webhook_backoff_s": 0.05})


@asynccontextmanager
async def serve(settings: Settings, engine: Any, **overrides: Any) -> AsyncIterator[httpx.AsyncClient]:
    """The app (lifespan running) built from ``settings`` with ``overrides``, and a client for it;
    the app is ``client.app``."""
    app = create_app(settings.model_copy(update=overrides), engine=engine)
    transport = httpx.ASGITransport(app=app)
    async with app.router.lifespan_context(app), httpx.AsyncClient(
        transport=transport, base_url="http://sdgate", timeout=30
    ) as client:
        client.app = app  # type: ignore[attr-defined]
        yield client


@pytest.fixture
async def api(native_settings: Settings, engine: FakeEngine) -> AsyncIterator[httpx.AsyncClient]:
    async with serve(native_settings, engine) as client:
        yield client


@pytest.fixture
def live_api(native_settings: Settings, engine: FakeEngine) -> Iterator[ThreadServer]:
    with ThreadServer(create_app(native_settings, engine=engine)) as server:
        yield server
