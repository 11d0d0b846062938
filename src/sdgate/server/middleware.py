"""Pure ASGI middleware: request ids, timing, the request-body limit (authentication: ``auth.py``).

Written as raw ASGI (not ``BaseHTTPMiddleware``) so streaming responses and progress polling pay
almost nothing for it.
"""

from __future__ import annotations

import logging
import time
import uuid
from contextvars import ContextVar

from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from sdgate.core.errors import PayloadTooLarge, SdgateError
from sdgate.logs import context_var
from sdgate.server.errors import DialectRoute, WrappedError, render_safely
from sdgate.server.refusals import matched_route

log = logging.getLogger("sdgate.server")

request_id_var: ContextVar[str] = ContextVar("request_id", default="-")
log_request_id = context_var("request_id")


class RequestContextMiddleware:
    """Sets ``X-Request-ID`` (echoing a sane caller value) and A1111's ``X-Process-Time``, and turns
    an unexpected exception into a 500 in the route's dialect, so even that response carries the id
    (Starlette's own last-resort handler sits outside every middleware)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = _header(scope, b"x-request-id")
        request_id = incoming if incoming and len(incoming) <= 128 and incoming.isprintable() else None
        request_id = request_id or uuid.uuid4().hex
        token = request_id_var.set(request_id)
        log_token = log_request_id.set(request_id)  # structured logs (--log-format json) carry it
        scope.setdefault("state", {})["request_id"] = request_id
        started = time.perf_counter()
        response_started = False

        async def send_with_headers(message: Message) -> None:
            nonlocal response_started
            if message["type"] == "http.response.start":
                response_started = True
                headers = list(message.get("headers", []))
                headers.append((b"x-request-id", request_id.encode()))
                headers.append((b"x-process-time", f"{time.perf_counter() - started:.4f}".encode()))
                message["headers"] = headers
            await send(message)

        try:
            await self.app(scope, receive, send_with_headers)
        except Exception as exc:
            if response_started:
                raise
            log.exception("unhandled error on %s %s", scope.get("method"), scope.get("path"))
            err = SdgateError(f"internal error ({type(exc).__name__}); request id {request_id}")
            response = render_safely(lambda: route_class_for(scope).render_error(err), err)
            await response(scope, receive, send_with_headers)
        finally:
            request_id_var.reset(token)
            log_request_id.reset(log_token)


class DefaultJsonMiddleware:
    """A body sent with no Content-Type is read as JSON, as A1111's FastAPI did: ``requests.post(url,
    data=json.dumps(payload))`` sends none, and newer FastAPI would otherwise see raw bytes."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] == "http"
            and scope["method"] in ("POST", "PUT", "PATCH")
            and _header(scope, b"content-type") is None
        ):
            scope = {**scope, "headers": [*scope.get("headers", ()), (b"content-type", b"application/json")]}
        await self.app(scope, receive, send)


class BodyLimitMiddleware:
    """Refuses request bodies over ``max_bytes`` (by Content-Length, or while streaming) with a 413
    rendered by the dialect of the route the request would have reached."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = _header(scope, b"content-length")
        if length and length.isdigit() and int(length) > self.max_bytes:
            await self._too_large(scope, receive, send)
            return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise WrappedError(self._error())
            return message

        await self.app(scope, limited_receive, send)

    def _error(self) -> PayloadTooLarge:
        return PayloadTooLarge(f"request body is larger than {self.max_bytes} bytes", field="body")

    async def _too_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        err = self._error()
        response: Response = render_safely(lambda: route_class_for(scope).render_error(err), err)
        await response(scope, receive, send)


def route_class_for(scope: Scope) -> type[DialectRoute]:
    """The dialect route class a request would be routed to (for errors raised before routing)."""
    route = matched_route(scope)
    return type(route) if isinstance(route, DialectRoute) else DialectRoute


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return value.decode("latin-1")
    return None

