"""Server fixtures: the real app (store, worker, dialects) over a scriptable fake engine."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from sdgate.server.app import create_app
from sdgate.settings import Settings
from tests.fakes import FakeEngine, write_fake_checkpoint


@pytest.fixture
def models_dir(tmp_path: Path) -> Path:
    root = tmp_path / "models"
    write_fake_checkpoint(root / "Stable-diffusion" / "alpha.safetensors")
    write_fake_checkpoint(root / "Stable-diffusion" / "sub" / "beta.safetensors")
    return root


@pytest.fixture
def settings(tmp_path: Path, models_dir: Path) -> Settings:
    return Settings(data_dir=tmp_path / "data", models_dir=models_dir, device="cpu", worker_poll_s=0.05)


@pytest.fixture
def engine() -> FakeEngine:
    return FakeEngine(slow_step_s=0.02)


@pytest.fixture
async def client(settings: Settings, engine: FakeEngine) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(settings, engine=engine)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://sdgate", timeout=30) as c:
            yield c
