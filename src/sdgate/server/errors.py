"""Exception -> HTTP response, rendered in the shape of the dialect that owns the matched route.

Each dialect's router is built with its own ``DialectRoute`` subclass, which knows how to render
errors in that dialect's body shape. The handlers read the matched route from the ASGI scope, so
``/v1/...`` routes of different dialects render their own bodies; requests that matched no route
(404, 405) get FastAPI's default bodies, as A1111 clients expect.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from http import HTTPStatus
from typing import Any, ClassVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from sdgate.core.errors import QueueFull, SdgateError

log = logging.getLogger("sdgate.server")


# Statuses any route may answer whatever it does: a bad body (400/413/422), auth (401), the
# queue (429), storage (507), an unexpected error (500). Routes add their own (404, 409, ...).
COMMON_ERROR_STATUSES: tuple[int, ...] = (400, 401, 413, 422, 429, 500, 507)


class DialectRoute(APIRoute):
    """A route of the native dialect; other dialects subclass and override the renderers.

    ``error_body`` is the pydantic model of the dialect's error body (what ``render_error``
    returns): every route documents it in the OpenAPI schema for ``COMMON_ERROR_STATUSES`` and for
    any status the route lists in ``responses`` without a model, so clients and schema fuzzers see
    each status a route can answer with its body shape.
    """

    dialect = "native"
    error_body: ClassVar[type[BaseModel] | None] = None
    # A dialect whose validation errors are not its ``error_body`` (A1111 keeps FastAPI's 422).
    validation_body: ClassVar[type[BaseModel] | None] = None

    def __init__(self, path: str, endpoint: Callable[..., Any], **kwargs: Any) -> None:
        if self.error_body is not None:
            kwargs["responses"] = document_errors(
                dict(kwargs.get("responses") or {}), self.error_body, self.validation_body
            )
        super().__init__(path, endpoint, **kwargs)

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


def document_errors(
    responses: dict[int | str, dict[str, Any]],
    body: type[BaseModel],
    validation_body: type[BaseModel] | None = None,
) -> dict[int | str, dict[str, Any]]:
    """``responses`` with every common error status, and each error status given without a
    model, documented as ``body`` (422: ``validation_body`` when the dialect has its own)."""
    codes = {int(k) for k in responses if str(k).isdigit()}
    out: dict[int | str, dict[str, Any]] = {k: v for k, v in responses.items() if not str(k).isdigit()}
    for status in sorted({*COMMON_ERROR_STATUSES, *(c for c in codes if c >= 400)}):
        entry = dict(responses.get(status) or responses.get(str(status)) or {})
        if "model" not in entry and "content" not in entry:
            entry["model"] = validation_body if status == 422 and validation_body else body
        entry.setdefault("description", HTTPStatus(status).phrase)
        out[status] = entry
    out.update({k: v for k, v in responses.items() if str(k).isdigit() and int(k) < 400})
    return out


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
