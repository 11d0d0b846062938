"""``GET /api/v1/audit``: the audit log (``jobs/audit.py``), newest first, for admins only (a key
with the ``admin`` scope; the anonymous principal of a server without credentials is one too).
Anyone else: 403 ``forbidden``. The same filters as ``sdgate audit``."""

from __future__ import annotations

import re
from dataclasses import replace
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import BaseModel, BeforeValidator, Field, TypeAdapter, ValidationError, WithJsonSchema
from starlette.concurrency import run_in_threadpool

from sdgate.core.errors import Forbidden
from sdgate.jobs.audit import (
    DURATION_PATTERN,
    MAX_PAGE,
    AuditFilter,
    AuditLog,
    as_utc,
    key_matches,
    parse_when,
)
from sdgate.server.deps import CurrentPrincipal
from sdgate.server.dialects.native.router import NativeRoute
from sdgate.server.runtime import RuntimeDep

# How long a query waits for this node's queued records to be written, so a call shows up in the
# log its own node is asked for right after it (other nodes' records: once their writers ran).
FLUSH_WAIT_S = 2.0
_KEY = "an API key's id, name or prefix, or a Basic user's name"
_WHEN = ("a duration back from now (90s, 15m, 1h, 7d, 2w), a date (2026-12-01: its midnight) or an "
         "ISO 8601 date-time; UTC unless it says")
_DATETIME = TypeAdapter(datetime)
_ISO_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}")


def _when_param(value: Any) -> Any:
    """A duration, or an ISO date or date-time (read as the job listing reads them; not a number,
    which pydantic would take for a Unix time) -> an aware UTC datetime."""
    if not isinstance(value, str):
        return value
    text = value.strip()
    if re.fullmatch(DURATION_PATTERN, text):
        return parse_when(text)
    if _ISO_DATE.match(text):
        try:
            return as_utc(_DATETIME.validate_python(text))
        except ValidationError:
            pass
    raise ValueError(_WHEN)


# The schema says exactly what is taken, so every value it allows is answered.
When = Annotated[datetime, BeforeValidator(_when_param), WithJsonSchema({"anyOf": [
    {"type": "string", "format": "date-time"},
    {"type": "string", "format": "date"},
    {"type": "string", "pattern": DURATION_PATTERN},
]})]


class AuditRecordOut(BaseModel):
    seq: int
    at: datetime = Field(description="when the call arrived")
    key_id: str | None = Field(description="the API key's id (never the key); null: none")
    principal: str | None = Field(description="who its jobs belong to: a key id or a Basic user")
    dialect: str | None
    method: str = Field(description="the HTTP method, or WEBSOCKET")
    route: str = Field(description="the route's template, e.g. /api/v1/jobs/{job_id}")
    status: int = Field(description="the HTTP status; 101: a WebSocket session")
    job_id: str | None
    images: int | None = Field(description="images its jobs asked for")
    gpu_seconds: float | None = Field(description="GPU seconds of the jobs it waited for")
    filtered: bool | None = Field(description="the content filter refused the request or an image")
    prompt: str | None = Field(description="only when the server audits prompts (--audit-prompts)")
    request_id: str | None


class AuditPageOut(BaseModel):
    records: list[AuditRecordOut]
    next_cursor: str | None = Field(None, description="pass as ?cursor= for the older records")


router = APIRouter(prefix="/api/v1", route_class=NativeRoute, tags=["native"])


@router.get("/audit", response_model=AuditPageOut, responses={403: {"description": "not an admin"}})
async def audit(
    runtime: RuntimeDep,
    principal: CurrentPrincipal,
    key: Annotated[str | None, Query(max_length=255, description=_KEY)] = None,
    since: Annotated[When | None, Query(description=f"from: {_WHEN}")] = None,
    until: Annotated[When | None, Query(description=f"before: {_WHEN}")] = None,
    route: Annotated[str | None, Query(max_length=255, description="a route template")] = None,
    status: Annotated[int | None, Query(ge=100, le=599)] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 100,
    cursor: Annotated[str | None, Query(pattern=r"^[0-9]{1,18}$", description="a next_cursor")] = None,
) -> dict[str, Any]:
    """Who called what, newest first: one record per call (key id, dialect, route template,
    status, job, images, GPU seconds), filtered by key, time, route and status."""
    if not principal.allows("admin"):
        raise Forbidden("the audit log needs a key with the admin scope")
    flt = AuditFilter(since=since, until=until, route=route, status=status)
    log = runtime.audit
    return await run_in_threadpool(_page, log, flt, key, limit, int(cursor) if cursor else None)


def _page(log: AuditLog, flt: AuditFilter, key: str | None, limit: int, cursor: int | None) -> dict[str, Any]:
    log.flush(FLUSH_WAIT_S)
    if key is not None:
        flt = replace(flt, keys=key_matches(log.database, key))
    page = log.query(flt, limit=limit, cursor=cursor)
    return {
        "records": [r.to_json() for r in page.records],
        "next_cursor": str(page.next_cursor) if page.next_cursor is not None else None,
    }

