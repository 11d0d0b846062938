"""Exception -> HTTP response, rendered in the shape of the dialect that owns the matched route.

Each dialect's router is built with its own ``DialectRoute`` subclass, which knows how to render
errors in that dialect's body shape. The handlers read the matched route from the ASGI scope, so
``/v1/...`` routes of different dialects render their own bodies; requests that matched no route
(404, 405) get FastAPI's default bodies, as A1111 clients expect.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Callable, Coroutine
from http import HTTPStatus
from typing import Any, ClassVar

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Receive, Scope, Send

from sdgate.core.errors import InvalidRequest, QueueFull, SdgateError
from sdgate.logs import log_context

log = logging.getLogger("sdgate.server")


# Statuses any route may answer whatever it does: a bad body (400/413/422), auth (401; 403 for an
# API key without the route's scope), the queue (429), storage (507), an unexpected error (500).
# Routes add their own (404, 409, ...).
COMMON_ERROR_STATUSES: tuple[int, ...] = (400, 401, 403, 413, 422, 429, 500, 507)


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

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        with log_context(dialect=self.dialect):  # structured logs say which dialect served it
            await super().handle(scope, receive, send)

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        """FastAPI's and Starlette's own 400 for a body they cannot parse (bytes that are not UTF-8,
        a broken form) answers ``{"detail"}``: re-raised as ``InvalidRequest`` so the dialect that
        owns the route renders it in its own shape."""
        handler = super().get_route_handler()

        async def shaped(request: Request) -> Response:
            try:
                return await handler(request)
            except StarletteHTTPException as exc:
                if exc.status_code != 400 or isinstance(exc, WrappedError):
                    raise
                raise WrappedError(InvalidRequest(f"body: {exc.detail}", field="body")) from None

        return shaped

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
    safe = safe_error(err)
    response = render_safely(lambda: route_class_of(request).render_error(safe), safe)
    if isinstance(err, QueueFull):
        response.headers["Retry-After"] = str(max(1, round(err.retry_after)))
    return response


# -- rendering that cannot raise -------------------------------------------------------------------
# A JSON response is ``json.dumps(..., allow_nan=False)`` encoded as UTF-8: a NaN, an Infinity, a
# lone surrogate, bytes or a deep structure echoed from a bad request would make the error handler
# itself fail. Whatever an error carries passes through ``json_safe`` first, and a renderer that
# fails anyway gets the minimal body of ``fallback_response``.

MAX_ECHO_DEPTH = 6  # levels of an echoed value before "..."
MAX_ECHO_ITEMS = 20  # items of an echoed list or object
MAX_ECHO_TEXT = 200  # characters of an echoed string
MAX_MESSAGE = 10_000  # characters of an error message


def safe_text(text: str, limit: int = MAX_ECHO_TEXT) -> str:
    """``text`` cut to ``limit`` characters, lone surrogates written as ``\\udXXX`` escapes."""
    if len(text) > limit:
        text = text[:limit] + "..."
    return text if text.isascii() else text.encode("utf-8", "backslashreplace").decode("utf-8")


def json_safe(value: Any, *, depth: int = 0) -> Any:
    """``value`` as something ``JSONResponse`` can always encode: non-finite floats as the strings
    "NaN" / "Infinity" / "-Infinity", text escaped and cut, bytes as their length, containers cut
    in length and depth, anything else as its (cut) ``str``."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value if value.bit_length() <= 64 else f"<an integer of {value.bit_length()} bits>"
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, str):
        return safe_text(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return f"<{len(value)} bytes>"
    if isinstance(value, dict | list | tuple | set | frozenset):
        if depth >= MAX_ECHO_DEPTH:
            return "..."
        if isinstance(value, dict):
            items = list(value.items())[:MAX_ECHO_ITEMS]
            return {safe_text(str(json_safe(k))): json_safe(v, depth=depth + 1) for k, v in items}
        return [json_safe(v, depth=depth + 1) for v in list(value)[:MAX_ECHO_ITEMS]]
    try:
        text = str(value)
    except Exception:  # a __str__ that fails must not fail the error path
        text = f"<{type(value).__name__}>"
    return safe_text(text)


def safe_error(err: SdgateError) -> SdgateError:
    """``err`` itself when its message and field encode, else a copy whose text does."""
    message = safe_text(err.message, MAX_MESSAGE)
    field = safe_text(err.field, MAX_ECHO_TEXT) if err.field else err.field
    if message == err.message and field == err.field:
        return err
    clone = copy.copy(err)
    clone.message, clone.field = message, field
    clone.args = (message,)
    return clone


def render_safely(render: Callable[[], Response], err: SdgateError) -> Response:
    """``render()``, or ``fallback_response`` if the dialect's renderer fails."""
    try:
        return render()
    except Exception:
        log.exception("rendering a %s error failed; answering with a minimal body", err.code)
        return fallback_response(err.status_code, err.code, err.message)


def fallback_response(status: int, code: str, message: str) -> JSONResponse:
    """The last resort: a body built only from plain text (``X-Request-ID`` is added by the
    middleware, as on every response)."""
    text = safe_text(str(message), MAX_MESSAGE)
    body = {"error": {"code": safe_text(code, 64), "message": text}, "detail": text}
    return JSONResponse(body, status_code=status)


def fastapi_validation_body(errors: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """FastAPI's default 422 ``detail`` list, each value made encodable (``json_safe``): a NaN sent
    where a number was expected is echoed as "NaN", a lone surrogate escaped, a deep value cut."""
    out = []
    for e in errors[:MAX_ECHO_ITEMS]:
        item = {k: json_safe(e[k]) for k in ("type", "loc", "msg", "input") if k in e}
        if isinstance(item.get("msg"), str):
            item["msg"] = safe_text(item["msg"], MAX_MESSAGE)
        out.append(item)
    return out


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(SdgateError)
    async def _sdgate_error(request: Request, exc: SdgateError) -> Response:
        if exc.status_code >= 500:
            log.warning("request failed: %s: %s", type(exc).__name__, safe_text(exc.message, MAX_MESSAGE))
        return error_response(request, exc)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> Response:
        try:
            errors = fastapi_validation_body(list(exc.errors()))
            return route_class_of(request).render_validation(errors)
        except Exception:
            log.exception("rendering a validation error failed; answering with a minimal body")
            return fallback_response(422, "invalid_request", "the request does not match the schema")

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if isinstance(exc, WrappedError):
            return error_response(request, exc.error)
        try:
            detail = exc.detail
            detail = safe_text(detail, MAX_MESSAGE) if isinstance(detail, str) else json_safe(detail)
            headers = getattr(exc, "headers", None)
            return JSONResponse({"detail": detail}, status_code=exc.status_code, headers=headers)
        except Exception:
            log.exception("rendering an HTTP %d failed; answering with a minimal body", exc.status_code)
            return fallback_response(exc.status_code, "http_error", HTTPStatus(exc.status_code).phrase)
