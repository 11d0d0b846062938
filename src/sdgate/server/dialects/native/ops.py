"""``/healthz`` (the process answers) and ``/readyz`` (it can take and run jobs)."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

import sdgate
from sdgate.core.errors import StorageUnavailable
from sdgate.server.dialects.native.protocol import HealthOut, ReadyOut
from sdgate.server.dialects.native.router import NativeRoute
from sdgate.server.services import Services

log = logging.getLogger("sdgate.server")
router = APIRouter(tags=["ops"], route_class=NativeRoute)


@router.get("/healthz", response_model=HealthOut)
async def healthz() -> dict[str, Any]:
    return {"status": "ok", "version": sdgate.__version__}


@router.get("/readyz", response_model=ReadyOut,
            responses={503: {"model": ReadyOut, "description": "not ready: see reason"}})
async def readyz(request: Request) -> JSONResponse:
    """Ready when the job store answers, the disks take writes and, in a process that generates, its
    workers run and the default model is known. An API-only process (no engine) needs no workers.
    Not ready answers carry ``reason``."""
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
    model_ok = True
    if services.engine is not None:
        checks["engine"] = services.engine.name
        checks["workers"] = len(services.workers)
        try:
            checks["model"] = (await run_in_threadpool(lambda: services.catalog.default)).name
        except Exception as exc:
            log.warning("readyz: no default model: %s", exc)
            checks["model"] = None
        # The null engine draws blank images without any model.
        model_ok = checks["model"] is not None or services.settings.engine == "null"
    ready = checks["store"] and (services.engine is None or bool(services.workers) and model_ok)
    body: dict[str, Any] = {"ready": ready and storage_fault is None, "checks": checks}
    if storage_fault is not None:
        body["reason"] = storage_fault
    elif not ready:
        body["reason"] = "the job store does not answer" if not checks["store"] else "no worker or model"
    return JSONResponse(body, status_code=200 if body["ready"] else 503)


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
