"""``/healthz`` (the process answers) and ``/readyz`` (it can take and run jobs): the server's own
routes, whatever dialects it speaks. Both are public (``server.auth``): a load balancer or an
orchestrator asks them without credentials."""

from __future__ import annotations

import logging
from typing import Any, ClassVar, Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

import sdgate
from sdgate.core.errors import StorageUnavailable
from sdgate.server.bodies import ErrorBody
from sdgate.server.errors import DialectRoute
from sdgate.server.services import Services

log = logging.getLogger("sdgate.server")


class HealthOut(BaseModel):
    status: Literal["ok"]
    version: str


class ReadyOut(BaseModel):
    """``/readyz``: 200 when ready, 503 (same body) with ``reason`` when not."""

    ready: bool
    checks: dict[str, Any] = Field(description="store, storage, engine, workers, model, queue_depth")
    reason: str | None = None


class HealthRoute(DialectRoute):
    """Errors in the server's default shape (``ErrorBody``), documented for each status."""

    error_body: ClassVar[type[BaseModel] | None] = ErrorBody
    dialect = "server"  # the server's own routes (health, metrics): no client dialect


router = APIRouter(tags=["ops"], route_class=HealthRoute)


@router.get("/healthz", response_model=HealthOut)
async def healthz() -> dict[str, Any]:
    return {"status": "ok", "version": sdgate.__version__}


@router.get("/readyz", response_model=ReadyOut,
            responses={503: {"model": ReadyOut, "description": "not ready: see reason"}})
async def readyz(request: Request) -> JSONResponse:
    """Ready when the job store answers, the disks take writes and, in a process that generates, its
    workers run and its engine knows the default model. An API-only process (no engine) needs no
    workers. Not ready answers carry ``reason``."""
    services: Services | None = getattr(request.app.state, "services", None)
    if services is None:
        return JSONResponse({"ready": False, "checks": {"started": False}}, status_code=503)
    checks: dict[str, Any] = {}
    try:
        checks["queue_depth"] = await run_in_threadpool(services.store.queue_depth)
        checks["store"] = True
    except Exception as exc:
        log.warning("readyz: the job store does not answer: %s", exc)
        checks["store"] = False
    storage_fault = await run_in_threadpool(_storage_fault, services)
    checks["storage"] = storage_fault or "ok"
    if services.engine is not None:
        checks["engine"] = services.engine.name
        checks["workers"] = len(services.workers)
        checks["model"] = await run_in_threadpool(_default_model, services)
    ready = checks["store"] and (
        services.engine is None or bool(services.workers) and checks["model"] is not None
    )
    body: dict[str, Any] = {"ready": ready and storage_fault is None, "checks": checks}
    if storage_fault is not None:
        body["reason"] = storage_fault
    elif not ready:
        body["reason"] = "the job store does not answer" if not checks["store"] else "no worker or model"
    return JSONResponse(body, status_code=200 if body["ready"] else 503)


def _default_model(services: Services) -> str | None:
    """The model a request that names none runs, as the engine answers it (an engine that needs no
    model file, like the null engine, answers without one), or None."""
    assert services.engine is not None
    try:
        return services.engine.model_defaults(None).name
    except Exception as exc:
        log.warning("readyz: no default model: %s", exc)
        return None


def _storage_fault(services: Services) -> str | None:
    """Why a store refuses writes, or None. A store whose last write failed is probed with one
    small real write, so readiness returns by itself once space does."""
    for store in (services.store, services.images):
        if store.storage_fault is None:
            continue
        try:
            store.probe_write()
        except StorageUnavailable as exc:
            return exc.message
        except Exception as exc:
            log.warning("readyz: the storage probe failed: %s", exc)
            return f"storage unavailable: {exc}"
    return None
