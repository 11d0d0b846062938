"""One error hierarchy for the whole server side. Each dialect renders these in its own shape.

    SdgateError                    500 internal_error
    ├── InvalidRequest             400 invalid_request      (a field is wrong; ``field`` names it)
    │   └── PayloadTooLarge        413 payload_too_large
    ├── Unauthorized               401 unauthorized
    ├── NotFound                   404 not_found
    │   └── ModelNotFound          404 model_not_found
    ├── Conflict                   409 conflict
    ├── QueueFull                  429 queue_full           (``retry_after`` seconds)
    │   └── TooManyJobs            429 too_many_jobs        (the caller's own limit, not the server's)
    ├── JobCancelled               409 job_cancelled
    ├── GenerationFailed           500 generation_failed
    │   └── OutOfMemory            507 out_of_memory        (names what to lower)
    ├── StorageUnavailable         507 storage_unavailable  (a disk is read-only or failing; names which)
    │   └── StorageFull            507 storage_full         (a disk is full; names which)
    └── ServiceUnavailable         503 unavailable

Only these become 4xx responses: a stray ValueError from a library is a bug, and is a 500.
"""

from __future__ import annotations


class SdgateError(Exception):
    status_code: int = 500
    code: str = "internal_error"

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field

    def to_dict(self) -> dict[str, str]:
        out = {"code": self.code, "message": self.message}
        if self.field:
            out["field"] = self.field
        return out


class InvalidRequest(SdgateError):
    status_code = 400
    code = "invalid_request"


class PayloadTooLarge(InvalidRequest):
    status_code = 413
    code = "payload_too_large"


class Unauthorized(SdgateError):
    status_code = 401
    code = "unauthorized"


class Forbidden(SdgateError):
    """Authenticated, but the principal's key lacks the scope the route needs."""

    status_code = 403
    code = "forbidden"


class NotFound(SdgateError):
    status_code = 404
    code = "not_found"


class ModelNotFound(NotFound):
    code = "model_not_found"


class Conflict(SdgateError):
    status_code = 409
    code = "conflict"


class QueueFull(SdgateError):
    status_code = 429
    code = "queue_full"

    def __init__(self, message: str, *, retry_after: float = 5.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class TooManyJobs(QueueFull):
    """The caller already holds as many queued or running jobs as its limit allows; others may
    still submit. A ``QueueFull``, so every dialect answers it as its 429 with ``Retry-After``."""

    code = "too_many_jobs"


class RateLimited(QueueFull):
    """The caller's request rate is over its key's limit (a token bucket); ``retry_after``: when
    the next token is there."""

    code = "rate_limited"


class QuotaExceeded(QueueFull):
    """The caller's images or GPU seconds for the day are spent; ``retry_after``: until the next
    UTC day."""

    code = "quota_exceeded"


class ContentFiltered(SdgateError):
    """The content filter refused a prompt (before a job exists) or an image (after generation).
    Each dialect reports it its own way (Stability ``CONTENT_FILTERED``, OpenAI
    ``content_policy_violation``, A1111 a blank image with a note)."""

    status_code = 400
    code = "content_filtered"


class JobCancelled(SdgateError):
    status_code = 409
    code = "job_cancelled"


class GenerationFailed(SdgateError):
    status_code = 500
    code = "generation_failed"


class OutOfMemory(GenerationFailed):
    status_code = 507
    code = "out_of_memory"


class StorageUnavailable(SdgateError):
    status_code = 507
    code = "storage_unavailable"


class StorageFull(StorageUnavailable):
    code = "storage_full"


class StorageUnreachable(StorageUnavailable):
    """The database or the bucket does not answer (restarting, a network fault): a 503 a load
    balancer or client retries, unlike a full or read-only disk (507). Same code for clients."""

    status_code = 503


class ServiceUnavailable(SdgateError):
    status_code = 503
    code = "unavailable"


ERROR_CLASSES: dict[str, type[SdgateError]] = {
    cls.code: cls
    for cls in (
        SdgateError,
        InvalidRequest,
        PayloadTooLarge,
        Unauthorized,
        Forbidden,
        NotFound,
        ModelNotFound,
        Conflict,
        QueueFull,
        TooManyJobs,
        RateLimited,
        QuotaExceeded,
        ContentFiltered,
        JobCancelled,
        GenerationFailed,
        OutOfMemory,
        StorageUnavailable,
        StorageFull,
        ServiceUnavailable,
    )
}


def error_from_dict(data: dict[str, str]) -> SdgateError:
    """Rebuild an error stored with a job (``to_dict``) as the matching class."""
    cls = ERROR_CLASSES.get(data.get("code", ""), SdgateError)
    err = cls.__new__(cls)
    SdgateError.__init__(err, data.get("message", ""), field=data.get("field"))
    if isinstance(err, QueueFull):
        err.retry_after = 5.0
    return err
