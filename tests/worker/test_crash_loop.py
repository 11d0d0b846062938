"""A job that kills its worker process is failed after its second death, and the server keeps
serving others: one request must not become a crash loop."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.fakes import write_fake_checkpoint
from tests.harness import ProcessServer, free_port
from tests.worker.serve_poison import DIE_EXIT_CODE

pytestmark = pytest.mark.slow  # three server processes start: about 10 s
CHILD = Path(__file__).with_name("serve_poison.py")


def child(data: Path, models: Path, port: int, log: Path, *, wait_ready: bool = True) -> ProcessServer:
    """The app over the poison engine (``serve_poison.py``), in its own process."""
    args = [sys.executable, str(CHILD), str(data), str(models), str(port)]
    return ProcessServer(args, port, log, wait_ready=wait_ready)


def test_a_job_that_kills_its_worker_is_failed_after_its_second_death(tmp_path: Path) -> None:
    models = tmp_path / "models"
    write_fake_checkpoint(models / "Stable-diffusion" / "alpha.safetensors")
    data, port, log = tmp_path / "data", free_port(), tmp_path / "server.log"

    # 1. The poison job kills its first process; a job queued behind it waits.
    first = child(data, models, port, log)
    try:
        poison = httpx.post(f"{first.url}/api/v1/jobs", json={"prompt": "die"}).json()["id"]
        waiting = httpx.post(f"{first.url}/api/v1/jobs", json={"prompt": "fine", "seed": 1}).json()["id"]
        assert first.died() == DIE_EXIT_CODE
    finally:
        first.stop()

    # 2. Re-queued once at the next start (it was running), it kills that process too.
    second = child(data, models, port, log, wait_ready=False)
    try:
        assert second.died() == DIE_EXIT_CODE
    finally:
        second.stop()

    # 3. The third start fails it for good; the waiting job and new ones run.
    third = child(data, models, port, log)
    try:
        with httpx.Client(base_url=third.url, timeout=30) as client:
            job = client.get(f"/api/v1/jobs/{poison}").json()
            assert job["state"] == "failed" and job["attempts"] == 2
            assert "the worker died while running this job twice" in job["error"]["message"]
            assert client.get(f"/api/v1/jobs/{waiting}?wait=20").json()["state"] == "succeeded"
            after = client.post("/sdapi/v1/txt2img", json={"prompt": "after", "steps": 2, "width": 64,
                                                           "height": 64})
            assert after.status_code == 200 and len(after.json()["images"]) == 1
            time.sleep(0.5)
            assert client.get(f"/api/v1/jobs/{poison}").json()["state"] == "failed"  # never retried
        assert third.proc.poll() is None
    finally:
        third.stop()
