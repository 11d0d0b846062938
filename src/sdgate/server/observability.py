"""``/metrics`` (Prometheus text format) and the middleware that counts every HTTP request.

The counts live in the process's ``Metrics`` (``services.metrics``, see ``sdgate.metrics``). A
request is labelled with the dialect whose route answered it (``DialectRoute.dialect``; ``server``
for the health and metrics routes and the docs, ``none`` when no route matched), the route's
template and its status; a stream (SSE, a long poll) is timed to its last byte.
"""

from __future__ import annotations

import time

from fastapi import APIRouter, Request, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from sdgate.metrics import CONTENT_TYPE, UNMATCHED_ROUTE
from sdgate.server.health import HealthRoute
from sdgate.server.services import Services

router = APIRouter(tags=["ops"], route_class=HealthRoute)


@router.get("/metrics", response_class=Response,
            responses={200: {"content": {CONTENT_TYPE: {}}, "description": "Prometheus text format"}})
async def metrics(request: Request) -> Response:
    """Every metric of this process (an API node, a worker, or both)."""
    services: Services = request.app.state.services
    return Response(services.metrics.render(), media_type=CONTENT_TYPE)


def route_template(route: object) -> str | None:
    """The route's public template, as the OpenAPI document writes it: ``/models/{model_id}``,
    without a convertor's name (``{model_id:path}``); None when ``route`` has no path."""
    template = getattr(route, "path_format", None) or getattr(route, "path", None)
    return template if isinstance(template, str) else None


def route_labels(scope: Scope) -> tuple[str, str]:
    """``(dialect, route template)`` of the route that answered, from the scope routing left."""
    route = scope.get("route")
    template = route_template(route)
    if template is None:
        return "none", UNMATCHED_ROUTE
    dialect = getattr(route, "dialect", None)  # HealthRoute's is "server"; the docs' routes have none
    return (dialect if isinstance(dialect, str) else "server"), template


class MetricsMiddleware:
    """Counts and times every HTTP request into ``app.state.services.metrics`` (once started)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # what the client sees when the app raises before answering

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            services = getattr(scope.get("app"), "state", None)
            found = getattr(services, "services", None) if services is not None else None
            if isinstance(found, Services):
                dialect, template = route_labels(scope)
                found.metrics.http_requests.labels(dialect, template, scope["method"], str(status)).inc()
                found.metrics.http_seconds.labels(dialect, template).observe(time.perf_counter() - started)
