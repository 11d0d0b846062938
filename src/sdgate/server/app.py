"""``create_app(settings)``: builds every service, mounts every dialect of the registry
(``server/dialects/registry.py``) and the health checks; nothing at import time."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.middleware.gzip import GZipMiddleware
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import compile_path

import sdgate
from sdgate.core.engine import Engine
from sdgate.server import health, observability, ui
from sdgate.server.audit import AuditMiddleware
from sdgate.server.auth import (
    AuthMiddleware,
    authenticator_for,
    install_log_redaction,
    start_authenticator,
)
from sdgate.server.dialect import job_payloads
from sdgate.server.dialects.registry import DIALECTS
from sdgate.server.docs import install_docs
from sdgate.server.errors import install_error_handlers
from sdgate.server.middleware import BodyLimitMiddleware, DefaultJsonMiddleware, RequestContextMiddleware
from sdgate.server.observability import MetricsMiddleware
from sdgate.server.ratelimit import RateLimitMiddleware
from sdgate.server.runtime import ServerRuntime
from sdgate.server.services import Services
from sdgate.settings import Settings

try:  # FastAPI >= 0.16x keeps included routers nested; this walks them with their full paths
    from fastapi.routing import iter_route_contexts
except ImportError:  # pragma: no cover - older FastAPI flattens routes into app.router.routes
    def iter_route_contexts(routes: Any) -> Any:  # type: ignore[misc]
        return routes

log = logging.getLogger("sdgate.server")


def create_app(
    settings: Settings, *, engine: Engine | None = None, run_workers: bool = True
) -> FastAPI:
    """The whole server. ``engine`` overrides the one ``settings.engine`` names (tests);
    ``run_workers=False`` makes an API-only process that leaves generation to ``sdgate worker``."""

    payloads = job_payloads(DIALECTS)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        services = Services.build(settings, engine=engine, run_workers=run_workers)
        app.state.services = services
        app.state.authenticator = start_authenticator(settings, services)
        # Before start(): webhooks hear of the jobs recovered at start-up.
        runtime = ServerRuntime.attach(services, payloads)
        for dialect in DIALECTS:
            dialect.attach(services)
        services.start()
        await runtime.start()
        try:
            yield
        finally:
            await runtime.stop()
            services.stop()
            runtime.detach()

    app = FastAPI(
        title="sdgate",
        version=sdgate.__version__,
        description="Self-hosted Stable Diffusion that speaks the APIs existing clients use.",
        lifespan=lifespan,
        docs_url=None,  # install_docs serves both pages from the package, not a CDN
        redoc_url=None,
    )
    install_error_handlers(app)
    install_log_redaction()  # the access log prints query strings: ?token= stays out of it
    app.add_exception_handler(405, _method_not_allowed)
    install_docs(app)
    if settings.ui:  # the web UI: its page and files (server/ui)
        app.mount(ui.ASSETS, ui.assets(), name="ui-assets")
        app.include_router(ui.router)
    for dialect in DIALECTS:
        for router in dialect.routers:
            app.include_router(router)
    app.include_router(health.router)
    app.include_router(observability.router)

    # Outermost first: the request id wraps everything, so even a 401 or 413 carries one.
    app.add_middleware(DefaultJsonMiddleware)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(RateLimitMiddleware)  # inside AuthMiddleware: it reads the principal
    app.add_middleware(AuthMiddleware, authenticator=authenticator_for(settings),  # UI files: no data
                       public=[*settings.public_endpoints, *(ui.public_paths() if settings.ui else [])])
    app.add_middleware(AuditMiddleware, dialects=DIALECTS)  # around auth: records its refusals too
    app.add_middleware(GZipMiddleware, minimum_size=1000)
    if settings.cors_allow_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_allow_origins,
            allow_credentials=True,
            allow_methods=["*"],
            allow_headers=["*"],
        )
    app.add_middleware(RequestContextMiddleware)
    app.add_middleware(MetricsMiddleware)  # outermost: counts even what the request id wraps
    return app


def create_worker_app(settings: Settings, *, engine: Engine | None = None) -> FastAPI:
    """A worker node (``sdgate worker``): its workers claim jobs from the shared store and run them;
    over HTTP it answers only ``/healthz``, ``/readyz`` (store, storage, engine and model) and
    ``/metrics``. No dialect, webhook or retention task: the API nodes own those. A SIGTERM
    drains it: the workers finish the jobs in hand and claim nothing new."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        services = Services.build(settings, engine=engine, run_workers=True)
        if services.engine is None:
            raise RuntimeError("a worker node needs workers (--workers 1 or more)")
        app.state.services = services
        app.state.authenticator = start_authenticator(settings, services)
        services.start(worker_node=True)
        try:
            yield
        finally:
            services.stop()

    app = FastAPI(title="sdgate worker", version=sdgate.__version__, lifespan=lifespan,
                  docs_url=None, redoc_url=None, openapi_url=None)
    install_error_handlers(app)
    install_log_redaction()
    app.include_router(health.router)
    app.include_router(observability.router)
    app.add_middleware(AuthMiddleware, authenticator=authenticator_for(settings),
                       public=settings.public_endpoints)
    app.add_middleware(RequestContextMiddleware)
    app.add_middleware(MetricsMiddleware)
    return app


async def _method_not_allowed(request: Request, exc: Exception) -> JSONResponse:
    """A 405 whose ``Allow`` lists every method of the path. Starlette answers from the first route
    whose path matches, listing only that route's methods, when several routes share a path."""
    path, root = request.scope["path"], request.scope.get("root_path", "")
    path = path[len(root):] if root and path.startswith(root) else path
    allowed: set[str] = set()
    for route in iter_route_contexts(request.app.router.routes):
        if route.path and route.methods and compile_path(route.path)[0].match(path):
            allowed |= route.methods
    headers = {"Allow": ", ".join(sorted(allowed))} if allowed else None
    detail = exc.detail if isinstance(exc, StarletteHTTPException) else "Method Not Allowed"
    return JSONResponse({"detail": detail}, status_code=405, headers=headers)
