"""A real uvicorn server on a free loopback port, in a thread (shared by the dialect tests)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import uvicorn

from sdgate.core.engine import Engine, ModelDefaults
from sdgate.core.models import ModelCatalog
from sdgate.server.app import create_app
from sdgate.settings import Settings


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


def default_model_defaults(settings: Settings) -> ModelDefaults:
    """What the default model's own defaults are (native size, steps, VAE factor) under ``settings``."""
    catalog = ModelCatalog(settings)
    return catalog.defaults_for(catalog.default)
