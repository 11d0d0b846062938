"""End to end: `sdgate serve` as a real process on loopback, driven by real A1111 clients."""

from __future__ import annotations

import base64
import contextlib
import io
import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from PIL import Image

from tests.harness import ProcessServer

pytestmark = pytest.mark.slow


@pytest.fixture
def live(tmp_path: Path, tiny_models_dir: Path) -> Iterator[ProcessServer]:
    args = ["--models-dir", str(tiny_models_dir), "--device", "cpu"]
    server = ProcessServer.sdgate(args, tmp_path / "data")
    yield server
    server.stop()


def test_webuiapi_drives_txt2img_progress_and_models(live: ProcessServer) -> None:
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


def test_plain_requests_script_with_and_without_json_header(live: ProcessServer) -> None:
    payload = {"prompt": "a blue square", "steps": 2, "width": 64, "height": 64, "seed": 3}
    r1 = requests.post(live.url + "/sdapi/v1/txt2img", json=payload, timeout=60)
    r2 = requests.post(live.url + "/sdapi/v1/txt2img", data=json.dumps(payload), timeout=60)
    assert r1.status_code == r2.status_code == 200
    # Same request, same device: identical pixels.
    a, b = (Image.open(io.BytesIO(base64.b64decode(r.json()["images"][0]))) for r in (r1, r2))
    assert a.tobytes() == b.tobytes()
    assert r1.headers["x-request-id"]


def test_kill_9_then_restart_finishes_every_job_once(tmp_path: Path, tiny_models_dir: Path) -> None:
    import threading

    from sdgate.core.jobs import JobState
    from sdgate.jobs.store import SqlJobStore

    data = tmp_path / "data"
    args = ["--models-dir", str(tiny_models_dir), "--device", "cpu"]
    server = ProcessServer.sdgate(args, data)
    payloads = [{"prompt": f"job {i}", "seed": 100 + i, "steps": 40, "width": 64, "height": 64}
                for i in range(4)]

    def post(payload: dict) -> None:
        with contextlib.suppress(requests.RequestException):  # the server is killed under it
            requests.post(server.url + "/sdapi/v1/txt2img", json=payload, timeout=120)

    threads = [threading.Thread(target=post, args=(p,), daemon=True) for p in payloads]
    for t in threads:
        t.start()
        time.sleep(0.05)
    store = SqlJobStore(f"sqlite:///{(data / 'sdgate.db').resolve()}", migrate=False)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        jobs = store.list(limit=10)
        states = [j.state for j in jobs]
        if len(jobs) == 4 and JobState.RUNNING in states and states.count(JobState.QUEUED) >= 2:
            break
        time.sleep(0.02)
    else:
        raise AssertionError(f"never saw a running job with others queued: {states}")
    running_id = next(j.id for j in jobs if j.state == JobState.RUNNING)
    server.stop(signal.SIGKILL)

    restarted = ProcessServer.sdgate(args, data)
    try:
        deadline = time.monotonic() + 300  # generous: CI machines are slow and shared
        while time.monotonic() < deadline:
            jobs = store.list(limit=10)
            if all(j.state.terminal for j in jobs):
                break
            time.sleep(0.1)
        assert [j.state for j in jobs] == [JobState.SUCCEEDED] * 4
        assert sorted(j.result.images[0].seed for j in jobs) == [100, 101, 102, 103]
        assert all(len(j.result.images) == 1 for j in jobs)
        attempts = {j.id: j.attempts for j in jobs}
        assert attempts.pop(running_id) == 2  # re-run once after the kill
        assert set(attempts.values()) == {1}  # the queued ones ran once
    finally:
        restarted.stop()
        store.close()
