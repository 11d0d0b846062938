"""The one live-server harness: the real app under a real uvicorn on a free loopback port, in a
thread of the test process (the fake engine needs no model). Subprocess servers (``sdgate serve``,
the kill -9 and two-process tests) take a port from ``free_port`` too."""

from __future__ import annotations

import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import uvicorn

from sdgate.core.engine import Engine
from sdgate.server.app import create_app
from sdgate.settings import Settings


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ProcessServer:
    """A server in a child process (``args``: the command) on ``port``; ready when ``/readyz``
    answers 200 (``wait_ready=False`` for one that may die first). Output goes to ``log``."""

    def __init__(self, args: list[str], port: int, log: Path, *, wait_ready: bool = True) -> None:
        self.url = f"http://127.0.0.1:{port}"
        self.log = log
        with log.open("ab") as out:
            self.proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)
        if wait_ready:
            self.wait_ready()

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                if httpx.get(self.url + "/readyz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            assert self.proc.poll() is None, f"the server exited at start: {self.log.read_text()}"
            assert time.monotonic() < deadline, f"the server did not start: {self.log.read_text()}"
            time.sleep(0.1)

    def died(self, timeout: float = 60) -> int:
        """Waits for the process to end by itself; its exit code."""
        return self.proc.wait(timeout)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(30)


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
