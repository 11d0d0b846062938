"""End to end: `sdgate serve` as a real process on loopback, driven by real A1111 clients."""

from __future__ import annotations

import base64
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import requests
from PIL import Image

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LiveServer:
    def __init__(self, args: list[str], data_dir: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = data_dir.parent / f"server-{self.port}.log"
        cmd = [sys.executable, "-m", "sdgate", "serve", "--port", str(self.port), "--data-dir", str(data_dir),
               *args]
        self.proc = subprocess.Popen(cmd, stdout=self.log.open("wb"), stderr=subprocess.STDOUT,
                                     env={**os.environ, "PYTHONUNBUFFERED": "1"})
        self.wait_ready()

    def wait_ready(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited: {self.log.read_text()}")
            try:
                if httpx.get(self.url + "/readyz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"server not ready: {self.log.read_text()}")

    def kill(self, sig: int = signal.SIGTERM) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(30)


@pytest.fixture
def live(tmp_path: Path, tiny_models_dir: Path) -> Iterator[LiveServer]:
    server = LiveServer(["--models-dir", str(tiny_models_dir), "--device", "cpu"], tmp_path / "data")
    yield server
    server.kill()


def test_webuiapi_drives_txt2img_progress_and_models(live: LiveServer) -> None:
    import webuiapi

    api = webuiapi.WebUIApi(host="127.0.0.1", port=live.port, sampler="Euler a", steps=3)
    result = api.txt2img(prompt="a red circle", width=64, height=64, seed=7, batch_size=2)
    assert len(result.images) == 2
    assert result.images[0].size == (64, 64)
    assert result.info["all_seeds"] == [7, 8]
    assert "Sampler: Euler a" in result.info["infotexts"][0]
    progress = api.get_progress()
    assert progress["progress"] == 0
    names = api.util_get_model_names()
    assert len(names) >= 2
    target = next(n for n in names if "sdxl" in n)
    api.util_set_model(target)
    assert "sdxl" in api.util_get_current_model()
    result = api.txt2img(prompt="x", width=64, height=64, seed=1, steps=2)
    assert "sdxl" in result.info["sd_model_name"]
    api.interrupt()  # nothing running: a no-op that must not fail


def test_plain_requests_script_with_and_without_json_header(live: LiveServer) -> None:
    payload = {"prompt": "a blue square", "steps": 2, "width": 64, "height": 64, "seed": 3}
    r1 = requests.post(live.url + "/sdapi/v1/txt2img", json=payload, timeout=60)
    r2 = requests.post(live.url + "/sdapi/v1/txt2img", data=json.dumps(payload), timeout=60)
    assert r1.status_code == r2.status_code == 200
    # Same request, same device: identical pixels.
    a, b = (Image.open(io.BytesIO(base64.b64decode(r.json()["images"][0]))) for r in (r1, r2))
    assert a.tobytes() == b.tobytes()
    assert r1.headers["x-request-id"]
