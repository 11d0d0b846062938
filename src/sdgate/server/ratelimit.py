"""The request rate of each principal, on every authenticated call (as hosted APIs count every
call, not only generations): a token bucket per principal in the job database
(``jobs/quotas.py``), so the limit holds across API nodes.

``RateLimitMiddleware`` sits right inside ``AuthMiddleware``: it reads the principal that one left
in the scope, and for a principal whose ``limits.rate_per_min`` is set it takes a token (in a
thread: the database is never called on the event loop) before the request goes on. Without a
token: a 429 ``RateLimited`` with ``Retry-After`` (the seconds until the next token) in the shape of
the dialect whose route the request was for (``server/refusals.py``), counted in
``sdgate_refusals_total{reason="rate_limited"}``. A principal without a rate limit (every
principal of a server without keys, public paths) passes through at no cost.
"""

from __future__ import annotations

import math

from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Receive, Scope, Send

from sdgate.core.errors import RateLimited
from sdgate.jobs.quotas import principal_key
from sdgate.server.admission import count_refusal, quotas_of
from sdgate.server.auth import Principal, current_principal
from sdgate.server.refusals import refuse
from sdgate.server.services import Services


class RateLimitMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        principal = current_principal(scope)
        rate = principal.limits.rate_per_min
        services = getattr(getattr(scope.get("app"), "state", None), "services", None)
        if rate is None or not isinstance(services, Services):
            await self.app(scope, receive, send)
            return
        wait = await run_in_threadpool(take_token, services, principal, rate)
        if wait is None:
            await self.app(scope, receive, send)
            return
        err = RateLimited(_message(principal, rate, wait), retry_after=_retry_after(wait))
        count_refusal(services, err)
        await refuse(scope, receive, send, err)


def take_token(services: Services, principal: Principal, rate_per_min: float) -> float | None:
    """None when ``principal`` may go on, else the seconds until its next token."""
    return quotas_of(services).take_token(
        principal_key(principal.id), rate_per_min=rate_per_min, burst=principal.limits.rate_burst
    )


def _retry_after(wait: float) -> float:
    """Whole seconds, at least one (``Retry-After`` is an integer); a zero rate: a day."""
    return 86400.0 if math.isinf(wait) else float(max(1, math.ceil(wait)))


def _message(principal: Principal, rate: float, wait: float) -> str:
    burst = principal.limits.rate_burst
    per = f"{rate:g} requests per minute" + (f" (bursts of {burst})" if burst is not None else "")
    if math.isinf(wait):
        return f"rate limit: {per}: this key may make no requests"
    return f"rate limit: {per}; the next request is allowed in {wait:.1f} s"
