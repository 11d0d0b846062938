"""``/healthz`` and ``/readyz`` (``server/health.py``): readiness asks the engine for the default
model, whatever the engine is (no branching on its name)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx

from sdgate.core.engine import ModelDefaults
from sdgate.core.errors import ModelNotFound
from sdgate.server.app import create_app
from sdgate.settings import Settings
from tests.fakes import FakeEngine


class NoModelEngine(FakeEngine):
    """An engine that needs a model file and has none (as diffusers on an empty models folder)."""

    name = "needs-files"

    def model_defaults(self, model: str | None) -> ModelDefaults:
        raise ModelNotFound("no model in the models folder")


@asynccontextmanager
async def serve(settings: Settings, engine: FakeEngine | None, *, run_workers: bool = True,
                ) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(settings, engine=engine, run_workers=run_workers)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://sdgate", timeout=30) as c:
            yield c


async def test_ready_when_the_engine_answers_for_the_default_model(settings: Settings) -> None:
    async with serve(settings, FakeEngine()) as client:
        r = await client.get("/readyz")
        health = await client.get("/healthz")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["ready"] is True and "reason" not in body
    assert body["checks"]["model"] == "fake" and body["checks"]["engine"] == "fake"
    assert body["checks"]["workers"] == 1 and body["checks"]["store"] is True
    assert health.status_code == 200 and health.json()["status"] == "ok"


async def test_not_ready_when_the_engine_has_no_default_model(settings: Settings) -> None:
    async with serve(settings, NoModelEngine()) as client:
        r = await client.get("/readyz")
    assert r.status_code == 503, r.text
    body = r.json()
    assert body["ready"] is False and body["reason"] == "no worker or model"
    assert body["checks"]["model"] is None and body["checks"]["engine"] == "needs-files"


async def test_the_null_engine_answers_with_the_default_model(tmp_path) -> None:  # noqa: ANN001
    settings = Settings(data_dir=tmp_path / "data", engine="null", device="cpu", worker_poll_s=0.05)
    async with serve(settings, None) as client:
        r = await client.get("/readyz")
        default = next(m["name"] for m in (await client.get("/api/v1/models")).json() if m["default"])
    assert r.status_code == 200, r.text
    assert r.json()["checks"]["engine"] == "null" and r.json()["checks"]["model"] == default


async def test_an_api_only_process_needs_no_engine(settings: Settings) -> None:
    async with serve(settings, NoModelEngine(), run_workers=False) as client:
        r = await client.get("/readyz")
    assert r.status_code == 200, r.text
    assert "engine" not in r.json()["checks"] and "model" not in r.json()["checks"]
