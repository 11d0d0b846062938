"""``GET /api/v1/cluster``: the workers the registry knows (any node's) and the queue by state, for
``sdgate status`` and operators. Read-only; like ``/api/v1/queue`` it needs what every native route
needs (HTTP Basic when the server has ``--api-auth``). A worker's current job id is shown to the job's
owner and to admins only: another caller's job id is not for anyone else to see."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from sdgate.core.errors import NotFound
from sdgate.core.jobs import JobStore, WorkerInfo
from sdgate.server.auth import Principal
from sdgate.server.deps import CurrentPrincipal, ServicesDep
from sdgate.server.dialects.native.router import NativeRoute


class WorkerOut(BaseModel):
    id: str
    host: str
    pid: int
    device: str | None
    engine: str | None
    models: list[str] = Field(description="models it holds loaded, most recently used first")
    free_memory_bytes: int | None = Field(description="free memory on its device; null: unknown")
    current_job: str | None = Field(description="id of the job it runs now (null: none, or not the caller's)")
    started_at: datetime
    last_seen: datetime | None
    stale: bool = Field(description="not heard from within the registry's TTL: probably dead")


class NodeOut(BaseModel):
    host: str
    workers: int
    live_workers: int


class ClusterOut(BaseModel):
    nodes: list[NodeOut] = Field(description="hosts that run workers")
    workers: list[WorkerOut]
    queue: dict[str, int] = Field(description="jobs by state: queued, running, succeeded, ...")


router = APIRouter(prefix="/api/v1", route_class=NativeRoute, tags=["native"])


@router.get("/cluster", response_model=ClusterOut)
async def cluster(services: ServicesDep, principal: CurrentPrincipal) -> dict[str, Any]:
    """Nodes, workers with their device, loaded models, free memory and current job (the caller's
    own; every job for an admin), and the queue depth by state."""
    return await run_in_threadpool(cluster_status, services.store, principal)


def cluster_status(store: JobStore, principal: Principal) -> dict[str, Any]:
    workers = store.list_workers()
    return {
        "nodes": _nodes(workers),
        "workers": [_worker_out(w, _visible_job(store, w.current_job_id, principal)) for w in workers],
        "queue": store.count_by_state(),
    }


def _visible_job(store: JobStore, job_id: str | None, principal: Principal) -> str | None:
    if job_id is None or principal.is_admin:
        return job_id
    try:
        return job_id if principal.owns(store.get(job_id).owner) else None
    except NotFound:  # finished and deleted meanwhile
        return None


def _worker_out(worker: WorkerInfo, current_job: str | None) -> dict[str, Any]:
    return {
        **worker.model_dump(exclude={"current_job_id", "models"}),
        "models": list(worker.models),
        "current_job": current_job,
    }


def _nodes(workers: list[WorkerInfo]) -> list[dict[str, Any]]:
    hosts: dict[str, list[WorkerInfo]] = {}
    for worker in workers:
        hosts.setdefault(worker.host, []).append(worker)
    return [
        {"host": host, "workers": len(mine), "live_workers": sum(not w.stale for w in mine)}
        for host, mine in sorted(hosts.items())
    ]
