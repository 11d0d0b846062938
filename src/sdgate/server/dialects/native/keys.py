"""``/api/v1/keys``: the API keys admin API (``admin`` scope, ``auth.required_scope``), the same
operations as ``sdgate keys``. A key's secret is in the answer of ``POST /keys`` and
``POST /keys/{id}/rotate`` only; no answer ever holds its digest.

Only an API key with the ``admin`` scope may call it: not the anonymous principal of a server
without credentials (on an open server anyone could otherwise make the first key and lock everyone
else out), nor a Basic user. The first admin key is made where the database is:
``sdgate keys create --name NAME --scopes admin``."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from sdgate.core.errors import Forbidden
from sdgate.jobs.keys import SCOPES, ApiKey, IssuedKey, KeyLimits, parse_expiry, parse_rate
from sdgate.server.auth import Principal, key_store
from sdgate.server.deps import CurrentPrincipal, ServicesDep
from sdgate.server.dialects.native.router import NativeRoute


def admin_key(principal: CurrentPrincipal) -> Principal:
    if principal.key_id is None or not principal.is_admin:
        raise Forbidden("the keys API needs an API key with the admin scope; make the first one with "
                        "`sdgate keys create --name NAME --scopes admin`")
    return principal


router = APIRouter(prefix="/api/v1", route_class=NativeRoute, tags=["keys"],
                   dependencies=[Depends(admin_key)])

_NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"description": "no such key"}}
_CONFLICT: dict[int | str, dict[str, Any]] = {409: {"description": "the name is taken, or the key revoked"}}
Count = Annotated[int | None, Field(ge=0, le=10**12)]
RATE_PATTERN = r"^\s*\d{1,12}(\.\d{1,6})?\s*(/\s*(s|sec|second|m|min|minute|h|hour|d|day))?\s*$"
EXPIRY_PATTERN = r"^\s*(\d{1,9}\s*[smhdwSMHDW]|\d{4}-\d{2}-\d{2}([T ][0-9:.+\-Z]{0,30})?)\s*$"


class KeyLimitsOut(BaseModel):
    rate_per_min: float | None = None
    rate_burst: int | None = None
    images_per_day: int | None = None
    gpu_seconds_per_day: float | None = None
    max_concurrent: int | None = None


class KeyOut(BaseModel):
    id: str = Field(description="what the key's jobs store as their owner; stays through rotation")
    name: str
    prefix: str = Field(description="the key's first characters: safe to show and log")
    scopes: list[str]
    limits: KeyLimitsOut
    state: str = Field(description="active, revoked or expired")
    created_at: datetime | None
    expires_at: datetime | None
    revoked_at: datetime | None
    rotated_at: datetime | None
    last_used_at: datetime | None = Field(description="to the minute")


class KeyIssued(KeyOut):
    key: str = Field(description="the secret: shown in this answer only")


class KeyCreate(BaseModel):
    name: str = Field(min_length=1, max_length=255)
    scopes: list[str] = Field(default_factory=lambda: ["generate", "read"], min_length=1, max_length=3,
                              description=f"any of {', '.join(SCOPES)}")
    rate: str | None = Field(None, max_length=40, pattern=RATE_PATTERN,
                             description="requests, e.g. 60/min, 2/s, 1000/h")
    rate_burst: Count = None
    images_per_day: Count = None
    gpu_seconds_per_day: Annotated[float | None, Field(ge=0, le=1e12)] = None
    max_concurrent: Count = Field(None, description="jobs queued or running at once")
    expires: str | None = Field(None, max_length=40, pattern=EXPIRY_PATTERN,
                                description="a duration (90d, 12h, 30m, 2w) or an ISO date in the future")


@router.get("/keys", response_model=list[KeyOut])
async def list_keys(services: ServicesDep) -> list[dict[str, Any]]:
    """Every key, revoked ones too, oldest first."""
    keys = await run_in_threadpool(key_store(services).list)
    return [key.public() for key in keys]


@router.post("/keys", status_code=201, response_model=KeyIssued, responses=_CONFLICT)
async def create_key(body: KeyCreate, services: ServicesDep) -> dict[str, Any]:
    """A new key; its secret (``key``) is in this answer and nowhere else, ever."""
    store = key_store(services)
    limits = KeyLimits(
        rate_per_min=parse_rate(body.rate) if body.rate is not None else None, rate_burst=body.rate_burst,
        images_per_day=body.images_per_day, gpu_seconds_per_day=body.gpu_seconds_per_day,
        max_concurrent=body.max_concurrent,
    )
    expires = parse_expiry(body.expires, store.clock()) if body.expires is not None else None
    issued = await run_in_threadpool(
        lambda: store.create(body.name, scopes=body.scopes, limits=limits, expires_at=expires)
    )
    return _issued(issued)


@router.get("/keys/{key_id}", response_model=KeyOut, responses=_NOT_FOUND)
async def get_key(key_id: str, services: ServicesDep) -> dict[str, Any]:
    key: ApiKey = await run_in_threadpool(key_store(services).get, key_id)
    return key.public()


@router.delete("/keys/{key_id}", response_model=KeyOut, responses=_NOT_FOUND)
async def revoke_key(key_id: str, services: ServicesDep) -> dict[str, Any]:
    """Revokes the key: refused on this node at once, on every other within seconds. Its jobs
    already queued or running are not cancelled."""
    store = key_store(services)
    key = await run_in_threadpool(lambda: store.revoke(store.get(key_id).id))
    return key.public()


@router.post("/keys/{key_id}/rotate", response_model=KeyIssued, responses={**_NOT_FOUND, **_CONFLICT})
async def rotate_key(key_id: str, services: ServicesDep) -> dict[str, Any]:
    """A new secret for the key (same id, scopes, limits and jobs); the old secret stops working."""
    store = key_store(services)
    issued = await run_in_threadpool(lambda: store.rotate(store.get(key_id).id))
    return _issued(issued)


def _issued(issued: IssuedKey) -> dict[str, Any]:
    return {**issued.key.public(), "key": issued.secret}
