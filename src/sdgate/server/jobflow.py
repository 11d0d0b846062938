"""Submitting jobs and waiting for them: shared by every dialect's routes."""

from __future__ import annotations

import asyncio
import base64
import logging
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from sdgate.core.errors import error_from_dict
from sdgate.core.jobs import ControlAction, Job, JobState
from sdgate.core.requests import GenerationRequest
from sdgate.server.services import Services

log = logging.getLogger("sdgate.server")


async def submit(
    services: Services,
    request: GenerationRequest,
    *,
    dialect: str,
    owner: str | None,
    priority: int = 0,
    metadata: dict[str, Any] | None = None,
) -> Job:
    job = await run_in_threadpool(
        lambda: services.store.submit(
            request, dialect=dialect, owner=owner, priority=priority, metadata=metadata
        )
    )
    log.info("job %s queued (%s, %d image(s))", job.id, dialect, request.image_count)
    return job


async def wait_for(services: Services, job: Job, http_request: Request | None = None) -> Job:
    """Wait until ``job`` is terminal. The job keeps running if the client goes away, unless
    ``cancel_on_disconnect`` is set."""
    waiter = asyncio.ensure_future(services.events.wait_terminal(services.store, job.id))
    if http_request is None or not services.settings.cancel_on_disconnect:
        return await waiter
    try:
        while True:
            done, _ = await asyncio.wait({waiter}, timeout=1.0)
            if done:
                return waiter.result()
            if await http_request.is_disconnected():
                log.info("client went away; cancelling job %s", job.id)
                await run_in_threadpool(services.store.request_control, job.id, ControlAction.CANCEL)
                return await waiter
    finally:
        waiter.cancel()


async def run_blocking(
    services: Services,
    request: GenerationRequest,
    http_request: Request,
    *,
    dialect: str,
    owner: str | None,
    metadata: dict[str, Any] | None = None,
) -> Job:
    """Submit, wait, and raise the job's own error if it failed (A1111-style blocking routes)."""
    job = await submit(services, request, dialect=dialect, owner=owner, metadata=metadata)
    job = await wait_for(services, job, http_request)
    if job.state == JobState.FAILED:
        raise error_from_dict(job.error or {"code": "internal_error", "message": "job failed"})
    if job.state == JobState.CANCELLED and not (job.result and job.result.images):
        raise error_from_dict({"code": "job_cancelled", "message": f"job {job.id} was cancelled"})
    return job


async def image_bytes(services: Services, job: Job) -> list[bytes]:
    if job.result is None:
        return []
    ids = [img.id for img in job.result.images]
    return await run_in_threadpool(lambda: [services.images.get(i) for i in ids])


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")
