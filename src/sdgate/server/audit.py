"""One audit record per HTTP call and per WebSocket session (``jobs/audit.py`` stores them).

``AuditMiddleware`` wraps ``AuthMiddleware`` (so it sees the refusals that one answers, as well as
every principal it lets in) and everything inside it: the rate limiter's 429s, the body limit's
413s, the routes. When the call ends it records:

- who: the principal's ``key_id`` and ``id`` (what its jobs store as their owner). Never a key, an
  ``Authorization`` header or a query token: nothing of the request is read but its method and the
  route it was for. A call ``AuthMiddleware`` refused has no principal: both ``None`` (status 401,
  or 403 for a key without the route's scope);
- what: the dialect and the route's template (``/api/v1/jobs/{job_id}``, never the raw path, which
  may hold a token), found from ``scope["route"]`` or, for a call refused before routing, from the
  route the request would have reached (``<unmatched>`` when none);
- the outcome: the status (101 for an accepted WebSocket; one refused before it was accepted: 401
  without a principal, 429 when closed with 1013 ("try again later"), else 403), the request id;
- its job: what the route's code noted in the call's ``AuditNote`` (``note_submitted`` and
  ``note_finished`` in ``jobflow``): the first job's id, the images asked for, the GPU seconds of the
  jobs it waited for, whether the content filter refused the request or an image, and the prompt
  only when ``--audit-prompts`` is on.

The public health checks and ``/metrics`` are not recorded (a refusal there is). Recording only
queues the record (``AuditLog.record``): a call never waits on the audit insert.
"""

from __future__ import annotations

from collections.abc import Iterable
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from fastapi.routing import APIWebSocketRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from sdgate.core.jobs import Job
from sdgate.jobs.audit import AuditLog, AuditRecord
from sdgate.metrics import UNMATCHED_ROUTE
from sdgate.server.auth import _SCOPE_KEY as PRINCIPAL_KEY
from sdgate.server.auth import Principal
from sdgate.server.dialect import Dialect
from sdgate.server.health import HealthRoute
from sdgate.server.observability import route_template
from sdgate.server.refusals import matched_route
from sdgate.server.runtime import ServerRuntime
from sdgate.server.services import Services

WS_TRY_AGAIN_LATER = 1013
_REFUSALS = frozenset({401, 403, 429})


@dataclass
class AuditNote:
    """What a call did with jobs, filled by the call's code. One mutable object per call, held in a
    context variable: the route's code, its thread-pool calls included, sees the same object."""

    job_id: str | None = None
    images: int | None = None
    gpu_seconds: float | None = None
    filtered: bool | None = None
    prompt: str | None = None


# None outside a recorded call (a worker, an app without the middleware): the notes do nothing.
_note: ContextVar[AuditNote | None] = ContextVar("sdgate_audit_note", default=None)


def note_submitted(job: Job, *, images: int, prompt: str | None) -> None:
    """A call queued ``job`` (its first one is the record's job id; images add up over its jobs)."""
    note = _note.get()
    if note is None:
        return
    if note.job_id is None:
        note.job_id = job.id
    note.images = (note.images or 0) + images
    if prompt is not None and note.prompt is None:
        note.prompt = prompt


def note_filtered() -> None:
    """The content filter refused the call's request (or an image of its job)."""
    note = _note.get()
    if note is not None:
        note.filtered = True


def note_finished(job: Job) -> None:
    """A call waited for ``job`` to end: its GPU seconds and whether an image of it was filtered."""
    note = _note.get()
    if note is None:
        return
    if job.started_at is not None and job.finished_at is not None:
        seconds = max(0.0, (job.finished_at - job.started_at).total_seconds())
        note.gpu_seconds = (note.gpu_seconds or 0.0) + seconds
    if job.result is not None:
        note.filtered = bool(note.filtered) or bool(job.result.filtered)


class AuditMiddleware:
    """``dialects``: the server's, whose WebSocket routes it names (FastAPI gives a WebSocket route
    no route class, so it carries no ``dialect``)."""

    def __init__(self, app: ASGIApp, dialects: Iterable[Dialect] = ()) -> None:
        self.app = app
        self.websockets = {
            route_template(route): dialect.name
            for dialect in dialects
            for router in dialect.routers
            for route in router.routes
            if isinstance(route, APIWebSocketRoute)
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        # One state dict shared with the layers inside, even one that copies the scope: the
        # principal AuthMiddleware leaves there is read once the call ends.
        state = scope.setdefault("state", {})
        note = AuditNote()
        token = _note.set(note)
        at = datetime.now(UTC)
        status: int | None = None

        async def watch(message: Message) -> None:
            nonlocal status
            kind = message["type"]
            if kind in ("http.response.start", "websocket.http.response.start"):
                status = int(message["status"])
            elif kind == "websocket.accept" and status is None:
                status = 101
            elif kind == "websocket.close" and status is None:
                status = _ws_refusal(message, state)
            await send(message)

        try:
            await self.app(scope, receive, watch)
        except BaseException:
            status = status or 500
            raise
        finally:
            _note.reset(token)
            if status is None:  # no answer at all: uvicorn answers 500, or 403 to a WebSocket
                status = 403 if scope["type"] == "websocket" else 500
            self._record(scope, state, at, status, note)

    def _record(
        self, scope: Scope, state: dict[str, Any], at: datetime, status: int, note: AuditNote
    ) -> None:
        audit = audit_log_of(scope)
        if audit is None:
            return
        route = scope.get("route")
        if not isinstance(getattr(route, "path", None), str):
            route = _would_route(scope)
        if isinstance(route, HealthRoute) and status not in _REFUSALS:
            return  # the health checks and /metrics: polled every few seconds, by balancers
        principal = state.get(PRINCIPAL_KEY)
        if not isinstance(principal, Principal):
            principal = None
        template = route_template(route) or UNMATCHED_ROUTE
        dialect = getattr(route, "dialect", None) or self.websockets.get(template)
        request_id = state.get("request_id")
        audit.record(AuditRecord(
            at=at,
            method=scope.get("method") or "WEBSOCKET",
            route=template,
            status=status,
            key_id=principal.key_id if principal is not None else None,
            principal=principal.id if principal is not None else None,
            dialect=dialect if isinstance(dialect, str) else None,
            job_id=note.job_id,
            images=note.images,
            gpu_seconds=note.gpu_seconds,
            filtered=note.filtered,
            prompt=note.prompt,
            request_id=request_id if isinstance(request_id, str) else None,
        ))


def _ws_refusal(message: Message, state: dict[str, Any]) -> int:
    if message.get("code") == WS_TRY_AGAIN_LATER:
        return 429
    return 403 if isinstance(state.get(PRINCIPAL_KEY), Principal) else 401


def _would_route(scope: Scope) -> Any:
    """The route a call refused before routing was for."""
    try:
        return matched_route(scope)
    except Exception:  # noqa: BLE001 - a scope no route can judge was for no route
        return None


def audit_log_of(scope: Scope) -> AuditLog | None:
    """The running server's audit log; None before its lifespan started (or in a worker node)."""
    services = getattr(getattr(scope.get("app"), "state", None), "services", None)
    if not isinstance(services, Services):
        return None
    runtime = services.state.find(ServerRuntime)
    return runtime.audit if runtime is not None else None
