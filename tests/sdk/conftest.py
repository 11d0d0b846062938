"""SDK fixtures: the real sdgate app (FakeEngine) in-process for the async client, and on a
loopback port (uvicorn in a thread) for the sync client."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn

from sdgate.server.app import create_app
from sdgate.settings import Settings
from tests.server.fakes import FakeEngine, write_fake_checkpoint


@pytest.fixture
def sd_settings(tmp_path: Path) -> Settings:
    root = tmp_path / "models"
    write_fake_checkpoint(root / "Stable-diffusion" / "alpha.safetensors")
    return Settings(data_dir=tmp_path / "data", models_dir=root, device="cpu", worker_poll_s=0.02)


@pytest.fixture
async def asgi_transport(sd_settings: Settings) -> AsyncIterator[httpx.ASGITransport]:
    app = create_app(sd_settings, engine=FakeEngine(step_s=0.01))
    async with app.router.lifespan_context(app):
        yield httpx.ASGITransport(app=app)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ThreadedServer:
    def __init__(self, settings: Settings) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        app = create_app(settings, engine=FakeEngine(step_s=0.01))
        config = uvicorn.Config(
            app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="on", ws="websockets-sansio"
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=lambda: asyncio.run(self.server.serve()), daemon=True)

    def __enter__(self) -> ThreadedServer:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the test server did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)


@pytest.fixture
def live_server(sd_settings: Settings) -> Iterator[ThreadedServer]:
    with ThreadedServer(sd_settings) as server:
        yield server
