"""``create_app(settings)``: builds every service, mounts every dialect; nothing at import time."""

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
from sdgate.server.auth import AuthMiddleware, authenticator_for
from sdgate.server.dialects.a1111.extras import router as a1111_extras_router
from sdgate.server.dialects.a1111.networks import router as a1111_networks_router
from sdgate.server.dialects.a1111.router import router as a1111_router
from sdgate.server.dialects.hf.router import router as hf_router
from sdgate.server.dialects.native.ops import router as ops_router
from sdgate.server.dialects.native.router import router as native_router
from sdgate.server.dialects.native.runtime import NativeRuntime
from sdgate.server.dialects.openai.router import router as openai_router
from sdgate.server.dialects.stability.router import router as stability_router
from sdgate.server.dialects.stability.router import v2_router as stability_v2_router
from sdgate.server.docs import install_docs
from sdgate.server.errors import install_error_handlers
from sdgate.server.middleware import (
    BodyLimitMiddleware,
    DefaultJsonMiddleware,
    RequestContextMiddleware,
)
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

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        services = Services.build(settings, engine=engine, run_workers=run_workers)
        app.state.services = services
        native = NativeRuntime.attach(services)  # before start(): recovered jobs' events are logged
        services.start()
        await native.start()
        try:
            yield
        finally:
            await native.stop()
            services.stop()
            native.detach()

    app = FastAPI(
        title="sdgate",
        version=sdgate.__version__,
        description="Self-hosted Stable Diffusion that speaks the APIs existing clients use.",
        lifespan=lifespan,
        docs_url=None,  # install_docs serves both pages from the package, not a CDN
        redoc_url=None,
    )
    install_error_handlers(app)
    app.add_exception_handler(405, _method_not_allowed)
    install_docs(app)
    app.include_router(stability_router)
    app.include_router(stability_v2_router)
    app.include_router(openai_router)
    app.include_router(hf_router)
    app.include_router(a1111_router)
    app.include_router(a1111_networks_router)
    app.include_router(a1111_extras_router)
    app.include_router(native_router)
    app.include_router(ops_router)

    # Outermost first: the request id wraps everything, so even a 401 or 413 carries one.
    app.add_middleware(DefaultJsonMiddleware)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(AuthMiddleware, authenticator=authenticator_for(settings))
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
