"""``create_app(settings)``: builds every service, mounts every dialect; nothing at import time."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.middleware.gzip import GZipMiddleware
from fastapi.responses import JSONResponse

import sdgate
from sdgate.core.engine import Engine
from sdgate.server.dialects.a1111.router import router as a1111_router
from sdgate.server.errors import install_error_handlers
from sdgate.server.middleware import (
    BasicAuthMiddleware,
    BodyLimitMiddleware,
    DefaultJsonMiddleware,
    RequestContextMiddleware,
)
from sdgate.server.services import Services
from sdgate.settings import Settings

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
        services.start()
        try:
            yield
        finally:
            services.stop()

    app = FastAPI(
        title="sdgate",
        version=sdgate.__version__,
        description="Self-hosted Stable Diffusion that speaks the APIs existing clients use.",
        lifespan=lifespan,
    )
    install_error_handlers(app)
    app.include_router(a1111_router)
    _add_ops_routes(app)

    # Outermost first: the request id wraps everything, so even a 401 or 413 carries one.
    app.add_middleware(DefaultJsonMiddleware)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    credentials = settings.auth_pairs()
    if credentials:
        app.add_middleware(BasicAuthMiddleware, credentials=credentials)
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


def _add_ops_routes(app: FastAPI) -> None:
    @app.get("/healthz", tags=["ops"])
    async def healthz() -> dict[str, Any]:
        return {"status": "ok"}

    @app.get("/readyz", tags=["ops"])
    async def readyz() -> JSONResponse:
        services: Services | None = getattr(app.state, "services", None)
        ready = services is not None and (services.engine is None or bool(services.workers))
        return JSONResponse({"ready": ready}, status_code=200 if ready else 503)
