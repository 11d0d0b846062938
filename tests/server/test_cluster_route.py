"""``GET /api/v1/cluster``: the registry's workers and the queue by state."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import httpx

from sdgate.core.jobs import WorkerInfo
from sdgate.jobs.store import SqlJobStore
from sdgate.settings import Settings


async def _workers(client: httpx.AsyncClient, count: int) -> dict[str, object]:
    for _ in range(100):  # the server's worker registers as it starts
        body: dict[str, object] = (await client.get("/api/v1/cluster")).json()
        if len(body["workers"]) >= count:  # type: ignore[arg-type]
            return body
        await asyncio.sleep(0.05)
    raise AssertionError(f"fewer than {count} workers registered")


async def test_the_cluster_shows_the_servers_worker_and_the_queue(client: httpx.AsyncClient) -> None:
    submitted = await client.post("/api/v1/jobs", json={"prompt": "one"})
    assert submitted.status_code == 202
    body = await _workers(client, 1)
    (worker,) = body["workers"]  # type: ignore[misc]
    assert worker["engine"] == "fake" and worker["stale"] is False and worker["device"]
    assert set(worker) >= {"id", "host", "pid", "models", "free_memory_bytes", "current_job", "last_seen"}
    assert body["nodes"] == [{"host": worker["host"], "workers": 1, "live_workers": 1}]
    queue = body["queue"]
    assert set(queue) == {"queued", "running", "succeeded", "failed", "cancelled"}  # type: ignore[arg-type]
    assert sum(queue.values()) == 1  # type: ignore[attr-defined]


async def test_a_worker_that_stopped_reporting_is_shown_stale(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    with SqlJobStore(settings.database_url) as elsewhere:  # another node's worker, dead for a minute
        long_ago = datetime.now(UTC) - timedelta(minutes=1)
        elsewhere.register_worker(WorkerInfo(id="gpu-9", host="node-b", pid=1, started_at=long_ago))
        elsewhere._workers.seen("gpu-9", models=["sdxl"], free_memory_bytes=None, current_job_id=None,
                                now=long_ago)
    body = await _workers(client, 2)
    dead = next(w for w in body["workers"] if w["id"] == "gpu-9")  # type: ignore[attr-defined]
    assert dead["stale"] is True and dead["models"] == ["sdxl"]
    nodes = {n["host"]: n for n in body["nodes"]}  # type: ignore[attr-defined]
    assert nodes["node-b"] == {"host": "node-b", "workers": 1, "live_workers": 0}
