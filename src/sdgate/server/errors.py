"""Exception -> HTTP response, rendered in the shape of the dialect that owns the matched route.

Each dialect's router is built with its own ``DialectRoute`` subclass, which knows how to render
errors in that dialect's body shape. The handlers read the matched route from the ASGI scope, so
``/v1/...`` routes of different dialects render their own bodies; requests that matched no route
(404, 405) get FastAPI's default bodies, as A1111 clients expect.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException

from sdgate.core.errors import QueueFull, SdgateError

log = logging.getLogger("sdgate.server")


class DialectRoute(APIRoute):
    """A route of the native dialect; other dialects subclass and override the renderers."""

    dialect = "native"

    @staticmethod
    def render_error(err: SdgateError) -> JSONResponse:
        return JSONResponse({"error": err.to_dict()}, status_code=err.status_code)

    @staticmethod
    def render_validation(errors: list[dict[str, Any]]) -> JSONResponse:
        first = errors[0] if errors else {}
        loc = [str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path")]
        field = ".".join(loc) or None
        err = {"code": "invalid_request", "message": f"{field or 'body'}: {first.get('msg', 'invalid')}"}
        if field:
            err["field"] = field
        return JSONResponse({"error": err, "detail": errors}, status_code=422)


class WrappedError(StarletteHTTPException):
    """Carries an ``SdgateError`` through code that only lets HTTPExceptions pass (FastAPI's body
    parsing turns any other exception into a generic 400)."""

    def __init__(self, error: SdgateError) -> None:
        super().__init__(status_code=error.status_code, detail=error.message)
        self.error = error


def route_class_of(request: Request) -> type[DialectRoute]:
    route = request.scope.get("route")
    return type(route) if isinstance(route, DialectRoute) else DialectRoute


def error_response(request: Request, err: SdgateError) -> JSONResponse:
    response = route_class_of(request).render_error(err)
    if isinstance(err, QueueFull):
        response.headers["Retry-After"] = str(max(1, round(err.retry_after)))
    return response


def fastapi_validation_body(errors: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """FastAPI's default 422 ``detail`` list, trimmed of values that may not serialise."""
    out = []
    for e in errors:
        item = {k: e[k] for k in ("type", "loc", "msg", "input") if k in e}
        value = item.get("input")
        if not isinstance(value, str | int | float | bool | type(None) | list | dict):
            item["input"] = str(value)
        elif isinstance(value, str) and len(value) > 200:
            item["input"] = value[:200] + "..."
        out.append(item)
    return out


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(SdgateError)
    async def _sdgate_error(request: Request, exc: SdgateError) -> JSONResponse:
        if exc.status_code >= 500:
            log.warning("request failed: %s: %s", type(exc).__name__, exc.message)
        return error_response(request, exc)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return route_class_of(request).render_validation(fastapi_validation_body(list(exc.errors())))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if isinstance(exc, WrappedError):
            return error_response(request, exc.error)
        return JSONResponse(
            {"detail": exc.detail}, status_code=exc.status_code, headers=getattr(exc, "headers", None)
        )
