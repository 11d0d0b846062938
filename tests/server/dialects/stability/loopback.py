"""A real uvicorn server on a free loopback port, in a thread (shared by the dialect tests)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import uvicorn

from sdgate.core.engine import Engine, ModelDefaults
from sdgate.core.models import ModelCatalog
from sdgate.server.app import create_app
from sdgate.settings import Settings
from tests.server.fakes import FakeEngine, write_fake_checkpoint


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def serve(settings: Settings, engine: Engine) -> Iterator[str]:
    """Serve ``create_app(settings, engine=engine)`` until the block ends; yields the base URL."""
    port = free_port()
    config = uvicorn.Config(
        create_app(settings, engine=engine), host="127.0.0.1", port=port, log_level="warning", lifespan="on"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name=f"uvicorn-{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)


def default_model_defaults(settings: Settings, engine_id: str | None = None) -> ModelDefaults:
    """The own defaults (native size, steps, VAE factor) of the model ``engine_id`` resolves to
    (``None``: the default model) under ``settings``."""
    from sdgate.server.model_aliases import resolve_model

    catalog = ModelCatalog(settings)
    return catalog.defaults_for(resolve_model(catalog, settings, engine_id, dialect="stability"))


# Module-scoped fixtures (each dialect's conftest imports them): one server per test module keeps
# the suite fast. They shadow tests/server/conftest.py's function-scoped ones of the same names;
# tests that need a server of their own call ``serve`` with a fresh data dir.


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("models")
    write_fake_checkpoint(root / "Stable-diffusion" / "alpha.safetensors")
    write_fake_checkpoint(root / "Stable-diffusion" / "sub" / "beta.safetensors")
    return root


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory, models_dir: Path) -> Settings:
    return Settings(
        data_dir=tmp_path_factory.mktemp("data"), models_dir=models_dir, device="cpu", worker_poll_s=0.05
    )


@pytest.fixture(scope="module")
def engine() -> FakeEngine:
    return FakeEngine(step_s=0.02)


@pytest.fixture(scope="module")
def live(settings: Settings, engine: FakeEngine) -> Iterator[str]:
    with serve(settings, engine) as url:
        yield url


def fresh(settings: Settings, data_dir: Path, **update: Any) -> Settings:
    """``settings`` with its own data dir (a second server must not share the first one's queue)."""
    return settings.model_copy(update={"data_dir": data_dir, **update})
