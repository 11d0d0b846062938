"""``sdgate api`` and ``sdgate worker``: the cluster's two processes, here on one SQLite data dir
(PostgreSQL and S3: tests/test_cluster.py). A job submitted to the API node runs on the worker
node; the worker answers /healthz, /readyz and /metrics only; SIGTERM drains it; stores it cannot
use are one line at start."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.fakes import write_fake_checkpoint
from tests.harness import ProcessServer, free_port

pytestmark = pytest.mark.slow  # three server processes start
SLOW_WORKER = Path(__file__).with_name("serve_slow_worker.py")


def _sdgate(*args: str) -> list[str]:
    return [sys.executable, "-m", "sdgate", *args]


def _wait(client: httpx.Client, job_id: str, ok: Any, timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        job = client.get(f"/api/v1/jobs/{job_id}").json()
        if ok(job):
            return job
        assert time.monotonic() < deadline, f"job {job_id} stuck: {job}"
        time.sleep(0.05)


def test_api_node_and_worker_node(tmp_path: Path) -> None:
    data, models = tmp_path / "data", tmp_path / "models"
    write_fake_checkpoint(models / "Stable-diffusion" / "fake.safetensors")
    api_port, worker_port = free_port(), free_port()
    api = ProcessServer(_sdgate("api", "--data-dir", str(data), "--models-dir", str(models), "--port",
                                str(api_port), "--log-level", "warning", "--log-format", "json"),
                        api_port, tmp_path / "api.log")
    node = ProcessServer(_sdgate("worker", "--engine", "null", "--data-dir", str(data), "--models-dir",
                                 str(models), "--port", str(worker_port), "--log-format", "json"),
                         worker_port, tmp_path / "worker.log")
    try:
        with httpx.Client(base_url=api.url, timeout=30) as c:
            r = c.post("/api/v1/jobs", json={"prompt": "a red circle", "steps": 3, "width": 64, "height": 64})
            assert r.status_code in (200, 201, 202), r.text
            job = _wait(c, r.json()["id"], lambda j: j["state"] == "succeeded")
            image = c.get(job["result"]["images"][0]["url"])
            assert image.status_code == 200 and image.content[:8] == b"\x89PNG\r\n\x1a\n"
            assert c.get("/readyz").json()["checks"].get("workers") is None  # no engine here
            assert c.get("/api/v1/queue").json()["workers"] == 1  # the worker node's, from the registry
        with httpx.Client(base_url=node.url, timeout=30) as w:
            ready = w.get("/readyz").json()
            assert ready["ready"] and ready["checks"]["workers"] == 1 and ready["checks"]["engine"] == "null"
            metrics = w.get("/metrics").text
            assert 'sdgate_jobs_finished_total{error="",state="succeeded"} 1.0' in metrics
            assert w.get("/sdapi/v1/options").status_code == 404  # no dialect on a worker node
            assert w.get("/api/v1/jobs").status_code == 404
        api_metrics = httpx.get(api.url + "/metrics").text
        assert 'sdgate_jobs_submitted_total{dialect="native"} 1.0' in api_metrics
        assert "sdgate_jobs_finished_total{" not in api_metrics  # the API node ran nothing
    finally:
        node.stop()
        api.stop()
    # --log-format json: every line the worker logged is one JSON object; the job's carry its id
    import json

    lines = [json.loads(x) for x in (tmp_path / "worker.log").read_text().splitlines() if x.startswith("{")]
    assert any(x.get("job_id") == job["id"] and x.get("worker_id") for x in lines), lines


def test_sigterm_drains_a_worker_node(tmp_path: Path) -> None:
    data, models = tmp_path / "data", tmp_path / "models"
    write_fake_checkpoint(models / "Stable-diffusion" / "fake.safetensors")
    api_port, worker_port = free_port(), free_port()
    api = ProcessServer(_sdgate("api", "--data-dir", str(data), "--models-dir", str(models), "--port",
                                str(api_port), "--log-level", "warning"), api_port, tmp_path / "api.log")
    node = ProcessServer([sys.executable, str(SLOW_WORKER), str(data), str(models), str(worker_port), "30",
                          "--worker-node"],
                         worker_port, tmp_path / "worker.log")
    try:
        with httpx.Client(base_url=api.url, timeout=30) as c:
            first = c.post("/api/v1/jobs", json={"prompt": "slow one", "steps": 20}).json()["id"]
            second = c.post("/api/v1/jobs", json={"prompt": "slow two", "steps": 20}).json()["id"]
            _wait(c, first, lambda j: (j.get("progress") or {}).get("step", 0) > 1)
            node.proc.send_signal(signal.SIGTERM)
            # uvicorn re-raises the SIGTERM once it has shut down gracefully: -15, after the drain
            assert node.proc.wait(60) in (0, -signal.SIGTERM)
            # the job in hand finished; nothing new was claimed
            assert c.get(f"/api/v1/jobs/{first}").json()["state"] == "succeeded"
            assert c.get(f"/api/v1/jobs/{second}").json()["state"] == "queued"
    finally:
        node.stop()
        api.stop()


@pytest.mark.parametrize(
    ("args", "expected", "code"),
    [
        (["--database", "mysql://x@localhost/db"], "'mysql' is not supported", 2),
        (["--database", "postgresql://nobody@127.0.0.1:1/none"], "127.0.0.1:1", 1),
        (["--storage", "ftp://host/x"], "'ftp' is not supported", 2),
        (["--log-format", "xml"], "--log-format must be one of text, json", 2),
    ],
)
def test_stores_it_cannot_use_are_one_line(tmp_path: Path, args: list[str], expected: str, code: int) -> None:
    for command in ("api", "worker"):
        extra = ["--engine", "null"] if command == "worker" else []
        out = subprocess.run(_sdgate(command, "--data-dir", str(tmp_path), *extra, *args),
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == code, (command, out.stdout, out.stderr)
        assert expected in out.stderr and "Traceback" not in out.stderr, out.stderr
        assert len(out.stderr.strip().splitlines()) <= 2, out.stderr
