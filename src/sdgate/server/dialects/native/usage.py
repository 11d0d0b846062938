"""``GET /api/v1/me``: who the caller is (the principal its credentials made), its scopes, its
limits, and what it used and has left of today's quotas (UTC), read from the job database, so the
answer is the same on every API node."""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from sdgate.server.admission import UsageReport, usage_report
from sdgate.server.auth import Principal
from sdgate.server.deps import CurrentPrincipal, ServicesDep
from sdgate.server.dialects.native.router import NativeRoute


class LimitsOut(BaseModel):
    max_queued_jobs: int | None = Field(description="its jobs queued or running at once")
    rate_per_min: float | None = Field(description="requests per minute (every call counts)")
    rate_burst: int | None = Field(description="requests at once after a pause (default: a minute's worth)")
    images_per_day: int | None = Field(description="images per UTC day")
    gpu_seconds_per_day: float | None = Field(description="GPU seconds its jobs may take per UTC day")


class UsageOut(BaseModel):
    day: str = Field(description="the UTC day (YYYY-MM-DD) the numbers are for")
    images: int = Field(description="images submitted today")
    gpu_seconds: float = Field(description="GPU seconds its finished jobs took today")
    images_left: int | None = Field(description="images it may still submit today; null: no limit")
    gpu_seconds_left: float | None = Field(description="GPU seconds left today; null: no limit")
    resets_at: datetime = Field(description="when the day's quotas start over (the next UTC midnight)")


class MeOut(BaseModel):
    id: str | None = Field(description="what its jobs record as their owner; null: the anonymous caller "
                           "of a server without credentials")
    name: str | None = Field(description="its API key's name")
    key_prefix: str | None = Field(description="the visible start of its API key")
    scopes: list[str]
    admin: bool = Field(description="sees and acts on every caller's jobs")
    limits: LimitsOut = Field(description="null fields: no such limit")
    usage: UsageOut


router = APIRouter(prefix="/api/v1", route_class=NativeRoute, tags=["native"])


@router.get("/me", response_model=MeOut)
async def me(services: ServicesDep, principal: CurrentPrincipal) -> MeOut:
    """The caller, its limits and what is left of today's quotas."""
    report = await run_in_threadpool(usage_report, services, principal)
    return me_out(principal, report)


def me_out(principal: Principal, report: UsageReport) -> MeOut:
    limits = principal.limits
    return MeOut(
        id=principal.id,
        name=principal.name,
        key_prefix=principal.key_prefix,
        scopes=sorted(principal.scopes),
        admin=principal.is_admin,
        limits=LimitsOut(
            max_queued_jobs=limits.max_queued_jobs,
            rate_per_min=limits.rate_per_min,
            rate_burst=limits.rate_burst,
            images_per_day=limits.images_per_day,
            gpu_seconds_per_day=limits.gpu_seconds_per_day,
        ),
        usage=UsageOut(
            day=report.day,
            images=report.used.images,
            gpu_seconds=report.used.gpu_seconds,
            images_left=report.images_left,
            gpu_seconds_left=report.gpu_seconds_left,
            resets_at=report.resets_at,
        ),
    )
