"""The one live-server harness: the real app under a real uvicorn on a free loopback port, in a
thread of the test process (the fake engine needs no model). Subprocess servers (``sdgate serve``,
the kill -9 and two-process tests) take a port from ``free_port`` too."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import uvicorn

from sdgate.core.engine import Engine
from sdgate.server.app import create_app
from sdgate.settings import Settings


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ThreadServer:
    """``with ThreadServer(app) as server:`` serves ``app`` at ``server.url`` until the block ends."""

    def __init__(self, app: Any) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(
            app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="on", ws="websockets-sansio"
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name=f"uvicorn-{self.port}", daemon=True)

    def __enter__(self) -> ThreadServer:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(30)


@contextmanager
def serve(settings: Settings, engine: Engine) -> Iterator[str]:
    """Serve ``create_app(settings, engine=engine)`` until the block ends; yields the base URL."""
    with ThreadServer(create_app(settings, engine=engine)) as server:
        yield server.url
