"""Two ``sdgate serve`` processes on one data dir: one API-only (``--workers 0``), one with a
worker. The boundary between them is the database alone: leases, the job outbox, stored previews."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from sdgate.jobs.schema import UTCDateTime, job_events, jobs
from tests.fakes import write_fake_checkpoint
from tests.harness import ProcessServer, free_port
from tests.server.dialects.native.conftest import parse_sse

pytestmark = pytest.mark.slow  # four server processes start: about 35 s
WORKER = Path(__file__).with_name("serve_slow_worker.py")
LEASE_S = 2.0


def api_only(data: Path, models: Path, port: int, log: Path) -> ProcessServer:
    args = [sys.executable, "-m", "sdgate", "serve", "--workers", "0", "--engine", "null",
            "--data-dir", str(data), "--models-dir", str(models), "--port", str(port),
            "--log-level", "warning"]
    return ProcessServer(args, port, log)


def worker(data: Path, models: Path, port: int, log: Path) -> ProcessServer:
    args = [sys.executable, str(WORKER), str(data), str(models), str(port), str(LEASE_S)]
    return ProcessServer(args, port, log)


def wait_job(client: httpx.Client, job_id: str, ok: Any, timeout: float = 30) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        job = client.get(f"/api/v1/jobs/{job_id}").json()
        if ok(job):
            return job
        assert time.monotonic() < deadline, f"job {job_id} stuck: {job}"
        time.sleep(0.05)


def _state_events(db: sa.Engine, job_id: str) -> list[str]:
    """The job's state changes in the outbox, in order."""
    with db.connect() as conn:
        return list(conn.execute(
            sa.select(job_events.c.kind)
            .where(job_events.c.job_id == job_id, job_events.c.kind != "progress")
            .order_by(job_events.c.seq)
        ).scalars())


def _running_with_progress(job: dict[str, Any]) -> bool:
    return job["state"] == "running" and bool(job.get("progress") and job["progress"].get("step"))


def test_two_processes_on_one_data_dir(tmp_path: Path) -> None:
    models, data = tmp_path / "models", tmp_path / "data"
    write_fake_checkpoint(models / "Stable-diffusion" / "alpha.safetensors")
    db = sa.create_engine(f"sqlite:///{data / 'sdgate.db'}")
    api_port, worker_port = free_port(), free_port()
    api = api_only(data, models, api_port, tmp_path / "api.log")
    gpu = worker(data, models, worker_port, tmp_path / "worker.log")
    try:
        with httpx.Client(base_url=api.url, timeout=60) as client:
            # 1. A job submitted to the API-only process runs on the other's worker, and its SSE
            #    progress streams through the API-only process.
            job = client.post("/api/v1/jobs", json={"prompt": "slow", "steps": 10, "seed": 1}).json()
            events = parse_sse(client.get(f"/api/v1/jobs/{job['id']}/events").text)
            kinds = [e["event"] for e in events]
            assert "progress" in kinds and kinds[-1] == "succeeded", kinds
            done = client.get(f"/api/v1/jobs/{job['id']}").json()
            assert done["state"] == "succeeded" and done["attempts"] == 1
            assert client.get(done["result"]["images"][0]["url"]).status_code == 200

            # 2. A1111's /progress, on the API-only process, follows an A1111 job the worker runs,
            #    with its live preview.
            answer: dict[str, Any] = {}

            def txt2img() -> None:
                answer["response"] = client.post("/sdapi/v1/txt2img", json={"prompt": "slow", "steps": 30})

            blocking = threading.Thread(target=txt2img)
            blocking.start()
            seen: dict[str, Any] = {}
            deadline = time.monotonic() + 30
            while not (seen.get("state", {}).get("sampling_step") and seen.get("current_image")):
                assert time.monotonic() < deadline, seen
                seen = client.get("/sdapi/v1/progress").json()
                time.sleep(0.1)
            assert 0 < seen["progress"] < 1 and seen["state"]["sampling_steps"] == 30
            blocking.join(60)
            assert answer["response"].status_code == 200 and len(answer["response"].json()["images"]) == 1

            # 3. Restarting the API-only process does not re-queue the job the worker runs.
            job = client.post("/api/v1/jobs", json={"prompt": "slow", "steps": 150, "seed": 2}).json()
            wait_job(client, job["id"], _running_with_progress)
        api.stop()
        api = api_only(data, models, api_port, tmp_path / "api.log")
        with httpx.Client(base_url=api.url, timeout=60) as client:
            still = client.get(f"/api/v1/jobs/{job['id']}").json()
            assert still["state"] == "running" and still["attempts"] == 1
            time.sleep(LEASE_S)  # the worker renews the lease meanwhile
            still = client.get(f"/api/v1/jobs/{job['id']}").json()
            assert still["state"] == "running" and still["attempts"] == 1
            client.post(f"/api/v1/jobs/{job['id']}/cancel")  # and the cancel reaches that worker
            wait_job(client, job["id"], lambda j: j["state"] == "cancelled")
            assert _state_events(db, job["id"]) == ["queued", "started", "cancelled"]

            # 4. kill -9 of the worker's process: its job is re-queued only once its lease has
            #    expired, by the next worker process, and succeeds exactly once.
            job = client.post("/api/v1/jobs", json={"prompt": "slow", "steps": 40, "seed": 3}).json()
            wait_job(client, job["id"], _running_with_progress)
            gpu.stop(signal.SIGKILL)
            with db.connect() as conn:
                query = sa.select(jobs.c.lease_expires_at).where(jobs.c.id == job["id"])
                raw = conn.execute(query).scalar_one()
            lease_end = UTCDateTime().process_result_value(raw, db.dialect)
            assert lease_end is not None and lease_end > datetime.now(UTC)
            gpu = worker(data, models, worker_port, tmp_path / "worker.log")
            done = wait_job(client, job["id"], lambda j: j["state"] == "succeeded", timeout=60)
            assert done["attempts"] == 2 and len(done["result"]["images"]) == 1
            assert _state_events(db, job["id"]) == ["queued", "started", "queued", "started", "succeeded"]
            with db.connect() as conn:
                raw = conn.execute(
                    sa.select(job_events.c.created_at)
                    .where(job_events.c.job_id == job["id"], job_events.c.kind == "queued")
                    .order_by(job_events.c.seq.desc()).limit(1)
                ).scalar_one()
            requeued_at = UTCDateTime().process_result_value(raw, db.dialect)
            assert requeued_at is not None and requeued_at >= lease_end
            stream = parse_sse(client.get(f"/api/v1/jobs/{job['id']}/events",
                                          headers={"Last-Event-ID": "0"}).text)
            assert [e["event"] for e in stream].count("succeeded") == 1
    finally:
        api.stop()
        gpu.stop()
        db.dispose()
    assert os.path.exists(data / "sdgate.db")
