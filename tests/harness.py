"""The one live-server harness, for the tests and the benchmarks: a real server on a free loopback
port, either the app under uvicorn in a thread of this process (``ThreadServer``, ``serve``: the
fake engine needs no model) or a child process (``ProcessServer``: ``sdgate serve`` itself, or a
test's own child script, for the kill -9, crash-loop and two-process tests). ``null_server`` is
``sdgate serve --engine null`` in a temporary data dir, what the benchmarks measure against.

Only the thread servers import the app (lazily): a benchmark that starts a child process loads
nothing of the server into its own.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

if TYPE_CHECKING:
    from sdgate.core.engine import Engine
    from sdgate.settings import Settings


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def sdgate_serve(port: int, data_dir: Path, *args: str) -> list[str]:
    """The command line of ``sdgate serve`` on ``port`` with ``data_dir`` (and ``args``)."""
    return [sys.executable, "-m", "sdgate", "serve", "--port", str(port), "--data-dir", str(data_dir), *args]


class ProcessServer:
    """A server in a child process (``args``: the command) on ``port``; ready when ``/readyz``
    answers 200 within ``timeout`` seconds (``wait_ready=False`` for one that may die first).
    Output goes to ``log``, unbuffered."""

    def __init__(
        self, args: list[str], port: int, log: Path, *, wait_ready: bool = True, timeout: float = 60
    ) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.log = log
        with log.open("ab") as out:
            self.proc = subprocess.Popen(
                args, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"}
            )
        if wait_ready:
            self.wait_ready(timeout)

    @classmethod
    def sdgate(cls, args: list[str], data_dir: Path, *, timeout: float = 120) -> ProcessServer:
        """``sdgate serve ARGS`` on a free port with ``data_dir``; its log beside the data dir."""
        port = free_port()
        log = data_dir.parent / f"server-{port}.log"
        return cls(sdgate_serve(port, data_dir, *args), port, log, timeout=timeout)

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
        """Sends ``sig`` and waits for the process to end (killed after 30 s)."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(30)


@contextmanager
def null_server(*args: str) -> Iterator[ProcessServer]:
    """``sdgate serve --engine null`` (blank images at once) in a temporary data dir, with one
    placeholder checkpoint to name, until the block ends."""
    from tests.fakes import write_fake_checkpoint

    with tempfile.TemporaryDirectory() as tmp:
        models = Path(tmp) / "models"
        write_fake_checkpoint(models / "Stable-diffusion" / "bench.safetensors")
        server = ProcessServer.sdgate(
            ["--engine", "null", "--models-dir", str(models), "--log-level", "warning", *args],
            Path(tmp) / "data",
        )
        try:
            yield server
        finally:
            server.stop()


class ThreadServer:
    """``with ThreadServer(app) as server:`` serves ``app`` at ``server.url`` until the block ends."""

    def __init__(self, app: Any) -> None:
        import uvicorn

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
    from sdgate.server.app import create_app

    with ThreadServer(create_app(settings, engine=engine)) as server:
        yield server.url
