"""Refusing a request from a middleware, before routing ran, in the shape of the dialect whose route
it was for: the rate limiter's 429 (``server/ratelimit.py``), and any other check that runs ahead of
the routes.

Routing has not chosen a route yet, so ``matched_route`` asks the app's routes which one the
request would reach (the first full match, else the first whose path matches with another method,
as Starlette does) and ``refuse`` renders the error with that route's ``DialectRoute.render_error``
through ``errors.error_response``: the same body, status and ``Retry-After`` the route itself would
have answered. A path no dialect owns gets the native body. A WebSocket is closed before it is
accepted: 1013 (try again later) for a 429, else 1008 (policy violation).

    await refuse(scope, receive, send, RateLimited("...", retry_after=2.0))
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Match
from starlette.types import Receive, Scope, Send

from sdgate.core.errors import QueueFull, SdgateError
from sdgate.server.errors import error_response

try:  # FastAPI >= 0.16x keeps included routers nested; this walks them with their full paths
    from fastapi.routing import iter_route_contexts
except ImportError:  # pragma: no cover - older FastAPI flattens routes into app.router.routes
    def iter_route_contexts(routes: Any) -> Any:  # type: ignore[misc]
        return routes

WS_TRY_AGAIN_LATER = 1013
WS_POLICY_VIOLATION = 1008


def matched_route(scope: Scope) -> BaseRoute | None:
    """The route ``scope`` would be routed to (its own route object, a ``DialectRoute`` for every
    dialect's routes), or None when no route's path matches."""
    app = scope.get("app")
    router = getattr(app, "router", None)
    if router is None:
        return None
    partial: BaseRoute | None = None
    for context in iter_route_contexts(router.routes):
        try:
            match, _ = context.matches(scope)
        except Exception:  # noqa: BLE001 - a route that cannot judge this scope does not own it
            continue
        route = getattr(context, "original_route", context)
        if match == Match.FULL:
            return route
        if match == Match.PARTIAL and partial is None:
            partial = route
    return partial


def refusal_response(scope: Scope, err: SdgateError) -> Response:
    """``err`` as the route ``scope`` was for would answer it; leaves that route in ``scope`` so the
    metrics and logs name it."""
    route = matched_route(scope)
    if route is not None:
        scope["route"] = route
    return error_response(Request(scope), err)


async def refuse(scope: Scope, receive: Receive, send: Send, err: SdgateError) -> None:
    """Answers ``err`` in place of the app: a response in the route's dialect, or a WebSocket close."""
    if scope["type"] == "websocket":
        code = WS_TRY_AGAIN_LATER if isinstance(err, QueueFull) else WS_POLICY_VIOLATION
        await send({"type": "websocket.close", "code": code, "reason": err.message[:120]})
        return
    response = refusal_response(scope, err)
    await response(scope, receive, send)
