"""Who is asking: every request becomes one ``Principal`` (id, scopes, limits), made in one place.

As httpx's ``Auth`` classes do for a client, one ``Authenticator`` base turns a request's
credentials into a principal, with one implementation per scheme:

    Authenticator
    ├── AnonymousAuth    no credentials configured: everyone is the anonymous principal
    └── BasicAuth        ``--api-auth user:pass,...``: HTTP Basic (API keys come next)

``authenticator_for(settings)`` picks the one a server runs with and gives every principal it makes
the server's per-principal ``Limits`` (``--max-queued-per-principal``). Without credentials that
limit is the anonymous principal's, so it caps everyone's jobs together: a server that cannot tell
callers apart has one caller. The job store enforces it (``JobStore.submit(max_owner_jobs=...)``).

``AuthMiddleware`` runs the authenticator before routing (so a refused request never reaches a
route) and leaves the principal in the ASGI scope; routes take it as ``CurrentPrincipal``
(``server/deps.py``) and pass it down (``jobflow.submit``), never a header.

Torch-free and FastAPI-free: Starlette types only.
"""

from __future__ import annotations

import base64
import binascii
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from sdgate.core.errors import Unauthorized
from sdgate.settings import Settings

ALL_SCOPES = "*"
_SCOPE_KEY = "principal"
_PUBLIC_PATHS = frozenset({"/healthz", "/readyz"})
# Signed, expiring image links carry their own credential (the signature) and are meant to be
# fetched by whoever holds the URL.
_PUBLIC_PREFIXES = ("/v1/images/files/",)


@dataclass(frozen=True)
class Limits:
    """What a principal may do; ``None``: no such limit (only the server-wide ones apply).

    - ``max_queued_jobs``: its jobs queued or running at once (an API key's ``--max-concurrent``),
      checked by the store in the transaction that inserts; over it: ``TooManyJobs``, a 429.
    - ``rate_per_min`` / ``rate_burst``: requests per minute, a token bucket holding at most
      ``rate_burst`` tokens (default: one minute's worth), kept in the database so it holds across
      API nodes (``jobs/quotas.py``); over it: 429 with ``Retry-After``.
    - ``images_per_day`` / ``gpu_seconds_per_day``: per UTC day, images reserved at submit and GPU
      seconds its finished jobs took (``jobs/quotas.py``); over them: 429 until the next day.
    """

    max_queued_jobs: int | None = None
    rate_per_min: float | None = None
    rate_burst: int | None = None
    images_per_day: int | None = None
    gpu_seconds_per_day: float | None = None

    def tightest(self, other: Limits) -> Limits:
        """Each limit the stricter of ``self`` and ``other`` (a key's own under the server's)."""

        def low(a: Any, b: Any) -> Any:
            return b if a is None else a if b is None else min(a, b)

        return Limits(**{f.name: low(getattr(self, f.name), getattr(other, f.name)) for f in fields(self)})


SCOPES = ("generate", "read", "admin")
BASIC_SCOPES = frozenset({"generate", "read"})


@dataclass(frozen=True)
class Principal:
    """The caller. ``id`` is what jobs store as their owner: the Basic user name, an API key's id,
    or ``None`` for the anonymous principal (a server without credentials, where every job is
    everyone's). ``key_id``/``key_prefix``/``name``: the API key it authenticated with, if one
    (the audit log and logs show these, never the key)."""

    id: str | None
    scopes: frozenset[str] = field(default_factory=lambda: frozenset({ALL_SCOPES}))
    limits: Limits = field(default_factory=Limits)
    key_id: str | None = None
    key_prefix: str | None = None
    name: str | None = None

    @property
    def anonymous(self) -> bool:
        return self.id is None

    def allows(self, scope: str) -> bool:
        return ALL_SCOPES in self.scopes or scope in self.scopes

    @property
    def is_admin(self) -> bool:
        """Sees and acts on every principal's jobs: an ``admin`` key, or the anonymous principal of a
        server without credentials (one caller, so everything is its own). Basic users
        (``--api-auth``) are ``generate`` + ``read``: each sees its own jobs only."""
        return self.allows("admin")

    @property
    def owner_filter(self) -> str | None:
        """The owner to restrict listings and lookups to: ``None`` (everyone's) for admins."""
        return None if self.is_admin else self.id

    def owns(self, owner: str | None) -> bool:
        """Whether a job (or image, upload) owned by ``owner`` is visible to this principal."""
        return self.is_admin or owner == self.id


ANONYMOUS = Principal(id=None)


class Authenticator:
    """Credentials -> ``Principal``, or ``Unauthorized``. ``challenge`` is the ``WWW-Authenticate``
    value sent with a 401."""

    challenge: str | None = None

    def authenticate(self, headers: Headers) -> Principal:
        raise NotImplementedError


class AnonymousAuth(Authenticator):
    def __init__(self, limits: Limits | None = None) -> None:
        self.principal = ANONYMOUS
        if limits is not None and limits != ANONYMOUS.limits:
            self.principal = Principal(id=None, limits=limits)

    def authenticate(self, headers: Headers) -> Principal:
        return self.principal


class BasicAuth(Authenticator):
    """HTTP Basic against ``{user: password}`` (A1111's ``--api-auth``); every user gets ``limits``."""

    challenge = "Basic"

    def __init__(self, credentials: Mapping[str, str], limits: Limits | None = None) -> None:
        self.credentials = {u.encode(): p.encode() for u, p in credentials.items()}
        self.limits = limits or Limits()

    def authenticate(self, headers: Headers) -> Principal:
        header = headers.get("authorization")
        if not header:
            raise Unauthorized("Not authenticated")
        user = self._check(header)
        if user is None:
            raise Unauthorized("Incorrect username or password")
        return Principal(id=user, scopes=BASIC_SCOPES, limits=self.limits)

    def _check(self, header: str) -> str | None:
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "basic":
            return None
        try:
            user, sep, password = base64.b64decode(value.strip(), validate=True).partition(b":")
        except (binascii.Error, ValueError):
            return None
        expected = self.credentials.get(user)
        # Compare against a dummy for unknown users so timing does not reveal valid names.
        ok = secrets.compare_digest(password, expected if expected is not None else b"\0" * 16)
        return user.decode("utf-8", "replace") if sep and expected is not None and ok else None


def authenticator_for(settings: Settings) -> Authenticator:
    """The one authenticator a server runs with: Basic when ``--api-auth`` is set, else anonymous;
    either way its principals carry the server's per-principal limits."""
    limits = Limits(max_queued_jobs=settings.max_queued_per_principal)
    credentials = settings.auth_pairs()
    return BasicAuth(credentials, limits) if credentials else AnonymousAuth(limits)


class AuthMiddleware:
    """Authenticates every HTTP and WebSocket request except the public ones (health checks and
    signed image links; A1111 leaves /loras open, we do not); a refusal is a 401 ``{"detail": ...}``
    (a WebSocket closes with 1008). Installed on every server, with or without credentials, so
    every route sees the principal the authenticator made, with its limits."""

    def __init__(self, app: ASGIApp, authenticator: Authenticator) -> None:
        self.app = app
        self.authenticator = authenticator

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] not in ("http", "websocket") or path in _PUBLIC_PATHS or path.startswith(
            _PUBLIC_PREFIXES
        ):
            await self.app(scope, receive, send)
            return
        try:
            principal = self.authenticator.authenticate(Headers(scope=scope))
        except Unauthorized as exc:
            await self._deny(scope, receive, send, exc.message)
            return
        scope.setdefault("state", {})[_SCOPE_KEY] = principal
        await self.app(scope, receive, send)

    async def _deny(self, scope: Scope, receive: Receive, send: Send, detail: str) -> None:
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        challenge = self.authenticator.challenge
        headers = {"WWW-Authenticate": challenge} if challenge else None
        response = JSONResponse({"detail": detail}, status_code=401, headers=headers)
        await response(scope, receive, send)


def current_principal(scope: Scope) -> Principal:
    """The principal ``AuthMiddleware`` left in ``scope``; anonymous (without limits) where none
    ran (a public path, or an app built without the middleware)."""
    principal = scope.get("state", {}).get(_SCOPE_KEY)
    return principal if isinstance(principal, Principal) else ANONYMOUS
