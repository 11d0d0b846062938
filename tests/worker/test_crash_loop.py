"""A job that kills its worker process is failed after its second death, and the server keeps
serving others: one request must not become a crash loop."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.harness import free_port
from tests.server.fakes import write_fake_checkpoint
from tests.worker.serve_poison import DIE_EXIT_CODE

pytestmark = pytest.mark.slow  # three server processes start: about 10 s
CHILD = Path(__file__).with_name("serve_poison.py")


class Child:
    def __init__(self, data: Path, models: Path, port: int, log: Path, *, wait_ready: bool = True) -> None:
        self.url = f"http://127.0.0.1:{port}"
        with log.open("ab") as out:
            self.proc = subprocess.Popen([sys.executable, str(CHILD), str(data), str(models), str(port)],
                                         stdout=out, stderr=subprocess.STDOUT)
        if not wait_ready:  # it may die before it answers
            return
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(self.url + "/readyz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            assert self.proc.poll() is None, f"the server exited at start: {log.read_text()}"
            assert time.monotonic() < deadline, f"the server did not start: {log.read_text()}"
            time.sleep(0.1)

    def died(self) -> int:
        """Waits for the poison job to kill the process; its exit code."""
        return self.proc.wait(60)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(30)


def test_a_job_that_kills_its_worker_is_failed_after_its_second_death(tmp_path: Path) -> None:
    models = tmp_path / "models"
    write_fake_checkpoint(models / "Stable-diffusion" / "alpha.safetensors")
    data, port, log = tmp_path / "data", free_port(), tmp_path / "server.log"

    # 1. The poison job kills its first process; a job queued behind it waits.
    first = Child(data, models, port, log)
    try:
        poison = httpx.post(f"{first.url}/api/v1/jobs", json={"prompt": "die"}).json()["id"]
        waiting = httpx.post(f"{first.url}/api/v1/jobs", json={"prompt": "fine", "seed": 1}).json()["id"]
        assert first.died() == DIE_EXIT_CODE
    finally:
        first.stop()

    # 2. Re-queued once at the next start (it was running), it kills that process too.
    second = Child(data, models, port, log, wait_ready=False)
    try:
        assert second.died() == DIE_EXIT_CODE
    finally:
        second.stop()

    # 3. The third start fails it for good; the waiting job and new ones run.
    third = Child(data, models, port, log)
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
