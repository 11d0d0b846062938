"""The SDK's errors. Every failure a caller can see is one of these:

    SdgateError
    ├── ConfigurationError             (no base URL, unknown backend kind, ...)
    ├── UnsupportedFeatureError        (a backend cannot honour a field or a mode)
    └── APIError                       (anything that came from talking to a service)
        ├── APIStatusError             (an HTTP error status: .status, .body, .request_id)
        │   ├── BadRequestError              400 (and other 4xx not listed)
        │   ├── AuthenticationError          401
        │   ├── PermissionDeniedError        403
        │   ├── NotFoundError                404
        │   ├── ConflictError                409
        │   ├── UnprocessableEntityError     422
        │   ├── RateLimitError               429
        │   └── InternalServerError          5xx
        ├── APIConnectionError         (no HTTP answer: DNS, refused, reset, broken stream)
        │   └── APITimeoutError
        ├── APIResponseError           (an answer we cannot read: wrong shape, not an image)
        └── JobFailedError             (the job ran and failed or was cancelled: .code, .job_id)

httpx's exceptions are translated in one place, ``_core.translate_transport_error``.
"""

from __future__ import annotations

from typing import Any


class SdgateError(Exception):
    """Base of every SDK error."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ConfigurationError(SdgateError):
    """The client was built wrongly (missing base URL, unknown backend, ...)."""


class UnsupportedFeatureError(SdgateError):
    """The chosen backend cannot do what was asked (a mode, or a field in strict mode)."""

    def __init__(self, message: str, *, backend: str = "", fields: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.backend = backend
        self.fields = fields


class APIError(SdgateError):
    """Something went wrong talking to a service."""


class APIStatusError(APIError):
    """The service answered with an error status."""

    status: int = 0

    def __init__(
        self,
        message: str,
        *,
        status: int,
        body: Any = None,
        request_id: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.body = body
        self.request_id = request_id
        self.code = code

    def __str__(self) -> str:
        suffix = f" (request id {self.request_id})" if self.request_id else ""
        return f"{self.status}: {self.message}{suffix}"


class BadRequestError(APIStatusError):
    status = 400


class AuthenticationError(APIStatusError):
    status = 401


class PermissionDeniedError(APIStatusError):
    status = 403


class NotFoundError(APIStatusError):
    status = 404


class ConflictError(APIStatusError):
    status = 409


class UnprocessableEntityError(APIStatusError):
    status = 422


class RateLimitError(APIStatusError):
    status = 429


class InternalServerError(APIStatusError):
    status = 500


class APIConnectionError(APIError):
    """No HTTP answer at all."""

    def __init__(self, message: str = "connection error", *, url: str | None = None) -> None:
        super().__init__(message)
        self.url = url


class APITimeoutError(APIConnectionError):
    def __init__(self, message: str = "request timed out", *, url: str | None = None) -> None:
        super().__init__(message, url=url)


class APIResponseError(APIError):
    """The service answered 2xx with something we cannot read."""


class JobFailedError(APIError):
    """The job reached ``failed`` or ``cancelled``."""

    def __init__(self, message: str, *, code: str = "failed", job_id: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.job_id = job_id


_BY_STATUS: dict[int, type[APIStatusError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    409: ConflictError,
    422: UnprocessableEntityError,
    429: RateLimitError,
}


def status_error_class(status: int) -> type[APIStatusError]:
    """The one status-to-class map."""
    if status >= 500:
        return InternalServerError
    if status in _BY_STATUS:
        return _BY_STATUS[status]
    if 400 <= status < 500:
        return BadRequestError
    return APIStatusError


def is_outage(exc: BaseException) -> bool:
    """Errors a fallback chain moves on for: the service is down, not the request wrong."""
    if isinstance(exc, APIConnectionError):
        return True
    return isinstance(exc, APIStatusError) and exc.status >= 500
