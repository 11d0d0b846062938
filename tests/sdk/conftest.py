"""SDK fixtures: the real sdgate app (FakeEngine) in-process for the async client, and on a
loopback port (uvicorn in a thread) for the sync client."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from sdgate.core.models import ModelCatalog
from sdgate.server.app import create_app
from sdgate.settings import Settings
from tests.fakes import FakeEngine, write_fake_checkpoint
from tests.harness import ThreadServer


@pytest.fixture
def sd_settings(tmp_path: Path) -> Settings:
    root = tmp_path / "models"
    write_fake_checkpoint(root / "Stable-diffusion" / "alpha.safetensors")
    return Settings(data_dir=tmp_path / "data", models_dir=root, device="cpu", worker_poll_s=0.02)


@pytest.fixture
async def asgi_transport(sd_settings: Settings) -> AsyncIterator[httpx.ASGITransport]:
    app = create_app(sd_settings, engine=FakeEngine(slow_step_s=0.01))
    async with app.router.lifespan_context(app):
        yield httpx.ASGITransport(app=app)


class ThreadedServer(ThreadServer):
    """The app over a fast fake engine, live on loopback for the sync client."""

    def __init__(self, settings: Settings) -> None:
        engine = FakeEngine(slow_step_s=0.01, catalog=ModelCatalog(settings))
        super().__init__(create_app(settings, engine=engine))


@pytest.fixture
def live_server(sd_settings: Settings) -> Iterator[ThreadedServer]:
    with ThreadedServer(sd_settings) as server:
        yield server
