"""The I/O-free half of both clients: options, backends, request building, retry decisions,
error mapping, the fallback plan and the cache. ``Client`` and ``AsyncClient`` only move bytes.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from sdgate import __version__
from sdgate.client._cache import ImageCache, cache_key, cacheable
from sdgate.client._constants import (
    DEFAULT_API_KEY_ENV,
    DEFAULT_BASE_URL_ENV,
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_GENERATION_TIMEOUT,
    DEFAULT_MAX_RETRIES,
    DEFAULT_POOL_TIMEOUT,
    DEFAULT_WRITE_TIMEOUT,
    MAX_CONNECTIONS,
    MAX_KEEPALIVE_CONNECTIONS,
    REQUEST_ID_HEADER,
    USER_AGENT,
)
from sdgate.client._exceptions import (
    APIConnectionError,
    APIResponseError,
    APIStatusError,
    APITimeoutError,
    ConfigurationError,
    SdgateError,
    UnsupportedFeatureError,
    is_outage,
    status_error_class,
)
from sdgate.client._ops import Call
from sdgate.client._ratelimit import TokenBucket
from sdgate.client._retry import backoff_delay, retry_after_from_headers, should_retry
from sdgate.client._types import GenerationResult, ImageInput, ImageRequest, to_png_bytes
from sdgate.client.backends import resolve_backend
from sdgate.client.backends._base import Backend, Context, Gen

log = logging.getLogger("sdgate.client")


def translate_transport_error(exc: httpx.TransportError, url: object = None) -> APIConnectionError:
    """httpx's exceptions -> ours, in this one place."""
    where = f" ({url})" if url is not None else ""
    if isinstance(exc, httpx.TimeoutException):
        return APITimeoutError(f"request timed out: {type(exc).__name__}{where}", url=str(url))
    detail = str(exc) or type(exc).__name__
    return APIConnectionError(f"connection error: {detail}{where}", url=str(url))


def unexpected_answer(backend: Backend, exc: Exception) -> APIResponseError:
    """A backend choked on what the service sent (a missing key, a wrong type, not JSON)."""
    return APIResponseError(f"unexpected answer from {backend.identity}: {type(exc).__name__}: {exc}")


def _message_and_code(body: Any) -> tuple[str | None, str | None]:
    """The human message of an error body, whichever service's shape it has."""
    if isinstance(body, dict):
        err = body.get("error")
        if isinstance(err, dict):  # native, OpenAI
            code = err.get("code")
            return (str(err.get("message") or err.get("type") or "")) or None, None if code is None else str(
                code
            )
        detail = body.get("detail")
        if isinstance(detail, str):  # A1111, FastAPI
            return detail, err if isinstance(err, str) else None
        if isinstance(detail, list) and detail:  # FastAPI validation
            first = detail[0]
            if isinstance(first, dict):
                loc = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
                return f"{loc}: {first.get('msg')}" if loc else str(first.get("msg")), "validation_error"
        if isinstance(body.get("message"), str):  # Stability v1
            return body["message"], body.get("name") if isinstance(body.get("name"), str) else None
        errors = body.get("errors")
        if isinstance(errors, list) and errors:  # Stability v2beta
            return "; ".join(str(e) for e in errors), body.get("name") if isinstance(
                body.get("name"), str
            ) else None
        if isinstance(err, str):  # Hugging Face
            return err, None
        if isinstance(err, list) and err:
            return "; ".join(str(e) for e in err), None
    if isinstance(body, str) and body.strip():
        return body.strip()[:500], None
    return None, None


def make_status_error(response: httpx.Response) -> APIStatusError:
    try:
        body: Any = response.json()
    except ValueError:
        body = response.text
    message, code = _message_and_code(body)
    cls = status_error_class(response.status_code)
    return cls(
        message or response.reason_phrase or "error",
        status=response.status_code,
        body=body,
        request_id=response.headers.get(REQUEST_ID_HEADER),
        code=code,
    )


def resolve_chain(
    base_url: str | None,
    backend: str | Backend | None,
    backends: Sequence[str | Backend] | None,
    *,
    api_key: str | None,
    auth: tuple[str, str] | None,
    rate_limit: float | TokenBucket | None,
    model: str | None,
) -> list[Backend]:
    kw: dict[str, Any] = {"api_key": api_key, "auth": auth, "rate_limit": rate_limit, "model": model}
    if backends:
        return [resolve_backend(b, **kw) for b in backends]
    if isinstance(backend, Backend):
        return [backend]
    url = base_url or os.environ.get(DEFAULT_BASE_URL_ENV)
    if not url:
        raise ConfigurationError(
            f"no server given: pass base_url=..., or set {DEFAULT_BASE_URL_ENV} (e.g. http://127.0.0.1:7860)"
        )
    return [resolve_backend(url, kind=backend, **kw)]


class BaseClient:
    """Everything that does no I/O. Public arguments are keyword-only (``base_url`` aside).

    - ``base_url``: the service; ``kind+URL`` picks a backend (see ``sdgate.client.backends``);
      falls back to ``SDGATE_BASE_URL``. ``backend=`` names the kind (or passes a ``Backend``).
    - ``backends=[primary, fallback, ...]``: a fallback chain, tried in order on outages
      (connection errors, timeouts, 5xx after retries), never on 4xx.
    - ``api_key`` (Bearer; falls back to ``SDGATE_API_KEY``) or ``auth=(user, password)`` (Basic;
      also read from ``http://user:pass@host``).
    - ``timeout``: seconds one generation may take (read timeout of blocking calls, deadline of
      waits); ``connect_timeout``: seconds to connect.
    - ``max_retries``: retries on connection errors, 408, 429, 5xx (Retry-After obeyed).
    - ``rate_limit``: requests per second, or a shared ``TokenBucket``, per backend.
    - ``cache``: a folder (or ``ImageCache``) for fixed-seed results; off by default.
    - ``strict``: raise ``UnsupportedFeatureError`` instead of dropping fields a backend cannot honour.
    - ``model``: the default model name; ``headers``: extra headers on every request.
    """

    def __init__(
        self,
        base_url: str | None = None,
        *,
        api_key: str | None = None,
        auth: tuple[str, str] | None = None,
        backend: str | Backend | None = None,
        backends: Sequence[str | Backend] | None = None,
        model: str | None = None,
        timeout: float = DEFAULT_GENERATION_TIMEOUT,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        max_retries: int = DEFAULT_MAX_RETRIES,
        rate_limit: float | TokenBucket | None = None,
        cache: str | Path | ImageCache | None = None,
        strict: bool = False,
        headers: dict[str, str] | None = None,
    ) -> None:
        if api_key is None:
            api_key = os.environ.get(DEFAULT_API_KEY_ENV) or None
        self.backends = resolve_chain(
            base_url, backend, backends, api_key=api_key, auth=auth, rate_limit=rate_limit, model=model
        )
        self.timeout = float(timeout)
        self.connect_timeout = float(connect_timeout)
        self.max_retries = int(max_retries)
        self.cache = ImageCache(cache) if isinstance(cache, str | Path) else cache
        self.strict = strict
        self.default_headers = dict(headers or {})
        self._options: dict[str, Any] = {
            "timeout": self.timeout,
            "connect_timeout": self.connect_timeout,
            "max_retries": self.max_retries,
            "cache": self.cache,
            "strict": strict,
            "headers": self.default_headers,
        }

    @property
    def backend(self) -> Backend:
        """The primary backend (the first of the chain)."""
        return self.backends[0]

    @property
    def base_url(self) -> str:
        return self.backend.base_url

    def _option_overrides(self, **changes: Any) -> dict[str, Any]:
        unknown = set(changes) - set(self._options)
        if unknown:
            raise TypeError(f"with_options() got unknown option(s): {', '.join(sorted(unknown))}")
        opts = {**self._options, **changes}
        return {**opts, "backends": self.backends}

    # -- requests ---------------------------------------------------------------------------------

    def _http_defaults(self) -> dict[str, Any]:
        return {
            "timeout": httpx.Timeout(self.timeout, connect=self.connect_timeout),
            "limits": httpx.Limits(
                max_connections=MAX_CONNECTIONS, max_keepalive_connections=MAX_KEEPALIVE_CONNECTIONS
            ),
            "follow_redirects": True,
            "headers": {"User-Agent": f"{USER_AGENT}/{__version__}"},
        }

    def _timeout(self, call: Call) -> httpx.Timeout:
        read = self.timeout if call.long else min(self.timeout, DEFAULT_WRITE_TIMEOUT)
        return httpx.Timeout(
            connect=self.connect_timeout, read=read, write=DEFAULT_WRITE_TIMEOUT, pool=DEFAULT_POOL_TIMEOUT
        )

    def _headers(self, call: Call, backend: Backend) -> dict[str, str]:
        return {**self.default_headers, **backend.auth_headers(), **backend.headers, **call.headers}

    def _ws_options(self, call: Call, backend: Backend) -> dict[str, Any]:
        return {
            "params": call.params,
            "headers": self._headers(call, backend),
            "connect_timeout": self.connect_timeout,
            "read_timeout": self.timeout,
        }

    def _retry_delay(
        self,
        attempt: int,
        call: Call,
        *,
        response: httpx.Response | None = None,
        error: APIConnectionError | None = None,
    ) -> float | None:
        """Seconds to wait before trying ``call`` again, or ``None`` to give up."""
        if not call.retry:
            return None
        headers = response.headers if response is not None else None
        retry_after = retry_after_from_headers(headers) if headers is not None else None
        ok = should_retry(
            attempt,
            self.max_retries,
            status=None if response is None else response.status_code,
            connection_error=error is not None,
            headers=headers,
            retry_after=retry_after,
        )
        if not ok:
            return None
        delay = backoff_delay(attempt, retry_after=retry_after)
        target = f"{call.method} {call.url}"
        cause = f"status {response.status_code}" if response is not None else type(error).__name__
        log.info(
            "retrying %s in %.2fs after %s (retry %d of %d)",
            target,
            delay,
            cause,
            attempt + 1,
            self.max_retries,
        )
        return delay

    # -- generation plan --------------------------------------------------------------------------

    def _request(self, prompt: str | ImageRequest, fields: dict[str, Any]) -> ImageRequest:
        if isinstance(prompt, ImageRequest):
            for key in ("init_image", "mask"):
                if key in fields:
                    fields[key] = to_png_bytes(fields[key])
            return prompt.replace(**fields) if fields else prompt
        return ImageRequest.build(prompt, **fields)

    def _plan(self, request: ImageRequest) -> list[tuple[Backend, tuple[str, ...]]]:
        """The backends to try in order, each with the fields it will drop. The primary must be able
        to run the request; fallbacks that cannot are left out of the chain."""
        plan = [(self.backend, self.backend.check(request, strict=self.strict))]
        for b in self.backends[1:]:
            try:
                plan.append((b, b.check(request, strict=self.strict)))
            except UnsupportedFeatureError:
                log.info("fallback %s skipped: it cannot run this request", b.identity)
        for b, ignored in plan:
            if ignored:
                log.warning(
                    "%s cannot honour: %s",
                    b.identity,
                    "; ".join(f"{name} ({b.unsupported[name]})" for name in ignored),
                )
        return plan

    def _attempts(self, request: ImageRequest, *, progress: bool) -> Iterator[Attempt]:
        """The fallback chain as attempts, each made when the previous one failed (its deadline
        starts then). A client drives ``attempt.protocol``, asks ``_falls_back`` when it raises, and
        hands a result to ``_finish``: the loop is this, only the driving differs (sync or async)."""
        plan = self._plan(request)
        for i, (backend, ignored) in enumerate(plan):
            yield Attempt(
                backend=backend,
                ignored=ignored,
                protocol=backend.generate(request, self._context(progress)),
                deadline=time.monotonic() + self.timeout,
                fallback=plan[i + 1][0] if i + 1 < len(plan) else None,
            )

    def _falls_back(self, attempt: Attempt, exc: SdgateError) -> bool:
        """Whether the next backend should run the request after ``attempt`` failed with ``exc``:
        only for an outage, and only when one is left."""
        if attempt.fallback is None or not is_outage(exc):
            return False
        backend, fallback = attempt.backend.identity, attempt.fallback.identity
        log.warning("%s is down (%s); falling back to %s", backend, exc, fallback)
        return True

    def _finish(self, attempt: Attempt, request: ImageRequest, result: GenerationResult) -> GenerationResult:
        result.ignored_fields = attempt.ignored
        self._cache_put(attempt.backend, request, result)
        return result

    def _check_sleep(self, seconds: float, deadline: float | None) -> None:
        """A backend's ``Sleep`` that would end past the generation's deadline times out instead."""
        if deadline is not None and time.monotonic() + seconds > deadline:
            raise APITimeoutError(f"gave up waiting after {self.timeout:g}s")

    def _context(self, progress: bool) -> Context:
        return Context(progress=progress, timeout=self.timeout)

    def _cache_get(self, request: ImageRequest) -> GenerationResult | None:
        if self.cache is None or not cacheable(request):
            return None
        for b in self.backends:
            hit = self.cache.get(cache_key(b.identity, request))
            if hit is not None:
                return hit
        return None

    def _cache_put(self, backend: Backend, request: ImageRequest, result: GenerationResult) -> None:
        if self.cache is not None and cacheable(request) and result.data:
            self.cache.put(cache_key(backend.identity, request), result)

    def _jobs_backend(self) -> Backend:
        b = self.backend
        if not b.supports_jobs:
            raise b._no_jobs()
        return b


@dataclass(frozen=True)
class Attempt:
    """One backend of the fallback chain, about to run a request."""

    backend: Backend
    ignored: tuple[str, ...]  # the request's fields this backend drops
    protocol: Gen  # the backend's generation protocol, not started
    deadline: float  # time.monotonic() by which it must finish
    fallback: Backend | None  # the next backend, if this one is down


def mode_fields(
    *, init_image: ImageInput | None = None, mask: ImageInput | None = None, **fields: Any
) -> dict[str, Any]:
    """Keyword arguments of txt2img/img2img/inpaint, as ``ImageRequest.build`` fields."""
    out = {k: v for k, v in fields.items() if v is not None}
    if "n" in out:
        out["batch_size"] = out.pop("n")
    if init_image is not None:
        out["init_image"] = init_image
    if mask is not None:
        out["mask"] = mask
    return out
