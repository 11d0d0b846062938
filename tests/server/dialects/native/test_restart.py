"""``kill -9`` mid-run, then restart: no job lost, no stream left hanging, streams resume."""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import httpx
import pytest

from tests.fakes import write_fake_checkpoint
from tests.harness import ProcessServer, free_port
from tests.server.dialects.native.conftest import parse_sse

pytestmark = pytest.mark.slow
CHILD = Path(__file__).with_name("serve_fake.py")


def child(data: Path, models: Path, port: int) -> ProcessServer:
    args = [sys.executable, str(CHILD), str(data), str(models), str(port)]
    return ProcessServer(args, port, data.parent / f"server-{port}.log")


def test_kill_9_mid_run_then_restart(tmp_path: Path) -> None:
    models = tmp_path / "models"
    write_fake_checkpoint(models / "Stable-diffusion" / "alpha.safetensors")
    data, port = tmp_path / "data", free_port()
    server = child(data, models, port)
    try:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            ids = [client.post("/api/v1/jobs", json={"prompt": "slow", "steps": 100, "seed": i}).json()["id"]
                   for i in range(3)]
            seen: list[dict] = []
            events_url = f"/api/v1/jobs/{ids[0]}/events"
            with pytest.raises(httpx.HTTPError), client.stream("GET", events_url) as stream:
                buffer = ""
                for chunk in stream.iter_text():
                    buffer += chunk
                    seen = parse_sse(buffer)
                    if any(e["event"] == "progress" for e in seen):
                        server.stop(signal.SIGKILL)  # the stream must end (not hang) when its server dies
        assert seen and seen[-1]["event"] == "progress"
    finally:
        server.stop(signal.SIGKILL)

    restarted = child(data, models, port)
    try:
        with httpx.Client(base_url=restarted.url, timeout=60) as client:
            resumed = parse_sse(client.get(f"/api/v1/jobs/{ids[0]}/events",
                                           headers={"Last-Event-ID": str(seen[-1]["id"])}).text)
            kinds = [e["event"] for e in resumed]
            assert kinds[0] == "queued" and kinds[-1] == "succeeded"  # re-queued by recovery, then ran
            for job_id in ids[1:]:
                assert parse_sse(client.get(f"/api/v1/jobs/{job_id}/events").text)[-1]["event"] == "succeeded"
            jobs = {job_id: client.get(f"/api/v1/jobs/{job_id}").json() for job_id in ids}
        assert [jobs[i]["state"] for i in ids] == ["succeeded"] * 3
        assert jobs[ids[0]]["attempts"] == 2
        assert [jobs[i]["result"]["images"][0]["seed"] for i in ids] == [0, 1, 2]
    finally:
        restarted.stop(signal.SIGTERM)
