"""Who is asking: every request becomes one ``Principal`` (id, scopes, limits), made in one place.

As httpx's ``Auth`` classes do for a client, one ``Authenticator`` base turns a request's
credentials into a principal, with one implementation per scheme:

    Authenticator
    ├── AnonymousAuth    no credentials configured: everyone is the anonymous principal
    ├── BasicAuth        ``--api-auth user:pass,...``: HTTP Basic, as A1111's
    ├── KeyAuth          API keys (``jobs/keys.py``), in every form a dialect's clients send them
    └── AutoAuth         ``--auth auto``: KeyAuth once a key exists, else Basic or anonymous

``authenticator_for(settings, keys)`` picks the one a server runs with (``--auth``) and gives every
principal it makes the server's per-principal ``Limits`` (``--max-queued-per-principal``); a key's
own limits are tightened by those (``Limits.tightest``). Without credentials that limit is the
anonymous principal's, so it caps everyone's jobs together: a server that cannot tell callers apart
has one caller.

A key is accepted as ``Authorization: Bearer <key>`` (native, OpenAI, Stability, Hugging Face,
A1111), a bare ``Authorization: <key>`` (Stability's own form), HTTP Basic with the key as the
password and any user name, or as the user name and an empty password (A1111's ``webuiapi``
``set_auth``), and ``?token=<key>`` (ComfyUI's form, and the only one a browser's WebSocket can
send). Where ``--api-auth`` is set too, its users keep working beside the keys. A header that is not
ASCII, is longer than ``MAX_CREDENTIAL_CHARS`` or is not what its scheme says is a 401, never a 500.

``AuthMiddleware`` runs the authenticator before routing (so a refused request never reaches a
route), checks the scope the request needs (``required_scope``: one rule of method and path), and
leaves the principal in the ASGI scope; routes take it as ``CurrentPrincipal`` (``server/deps.py``)
and pass it down, never a header. A refusal is rendered by the dialect of the route the request was
for (``server/refusals.py``): a 401 (no, malformed, unknown, revoked or expired credentials, the
message says which) or a 403 (a key without the scope); a WebSocket is closed with 1008 before it is
accepted (servers answer that handshake with an HTTP 403). ``admin`` includes every scope.

Keys are verified through the key store's short cache (``jobs.keys.KEY_CACHE_S``): a key revoked or
rotated on another node, or with ``sdgate keys``, is refused here within that many seconds; one
revoked through this server's admin API at once.
"""

from __future__ import annotations

import base64
import binascii
import logging
import re
import secrets
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from sdgate.core.errors import Forbidden, SdgateError, Unauthorized
from sdgate.server.refusals import refusal_response, refuse
from sdgate.settings import Settings

if TYPE_CHECKING:
    from sdgate.jobs.keys import ApiKey, KeyStore
    from sdgate.server.services import Services

log = logging.getLogger("sdgate.server")

ALL_SCOPES = "*"
_SCOPE_KEY = "principal"
DEFAULT_PUBLIC_ENDPOINTS = ("healthz", "readyz")
# Signed, expiring image links carry their own credential (the signature) and are meant to be
# fetched by whoever holds the URL.
_PUBLIC_PREFIXES = ("/v1/images/files/",)
MAX_CREDENTIAL_CHARS = 4096
# How often ``--auth auto`` looks for a first key while it has none (``sdgate keys create`` on a
# running server turns keys on within this many seconds).
AUTO_RECHECK_S = 5.0
QUERY_TOKEN = "token"
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
        """Whether the principal has ``scope``; ``admin`` includes every other scope."""
        return ALL_SCOPES in self.scopes or scope in self.scopes or "admin" in self.scopes

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
    value sent with a 401. ``query_token``: the request's ``?token=`` parameter, if any."""

    challenge: str | None = None

    def authenticate(self, headers: Headers, query_token: str | None = None) -> Principal:
        raise NotImplementedError

    async def authenticate_async(self, headers: Headers, query_token: str | None = None) -> Principal:
        """What the middleware calls: ``authenticate`` unless a subclass must leave the event loop
        (a database query)."""
        return self.authenticate(headers, query_token)


class AnonymousAuth(Authenticator):
    def __init__(self, limits: Limits | None = None) -> None:
        self.principal = ANONYMOUS
        if limits is not None and limits != ANONYMOUS.limits:
            self.principal = Principal(id=None, limits=limits)

    def authenticate(self, headers: Headers, query_token: str | None = None) -> Principal:
        return self.principal


class BasicAuth(Authenticator):
    """HTTP Basic against ``{user: password}`` (A1111's ``--api-auth``); every user gets ``limits``."""

    challenge = "Basic"

    def __init__(self, credentials: Mapping[str, str], limits: Limits | None = None) -> None:
        self.credentials = {u.encode(): p.encode() for u, p in credentials.items()}
        self.limits = limits or Limits()

    def authenticate(self, headers: Headers, query_token: str | None = None) -> Principal:
        header = headers.get("authorization")
        if not header:
            raise Unauthorized("Not authenticated")
        user = self._check(header)
        if user is None:
            raise Unauthorized("Incorrect username or password")
        return Principal(id=user, scopes=BASIC_SCOPES, limits=self.limits)

    def knows(self, user: str) -> bool:
        return user.encode("utf-8", "surrogateescape") in self.credentials

    def _check(self, header: str) -> str | None:
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "basic" or len(header) > MAX_CREDENTIAL_CHARS:
            return None
        try:
            user, sep, password = base64.b64decode(value.strip(), validate=True).partition(b":")
        except (binascii.Error, ValueError):
            return None
        expected = self.credentials.get(user)
        # Compare against a dummy for unknown users so timing does not reveal valid names.
        ok = secrets.compare_digest(password, expected if expected is not None else b"\0" * 16)
        return user.decode("utf-8", "replace") if sep and expected is not None and ok else None


# -- API keys ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Presented:
    """What a request presents: a key (Bearer, bare, ``?token=``), or Basic's user and password."""

    key: str | None = None
    user: str | None = None
    password: str | None = None


def read_credentials(headers: Headers, query_token: str | None = None) -> Presented | None:
    """The credentials of a request, ``None`` when it has none; ``Unauthorized`` for a header that
    is not well formed (never another exception)."""
    header = headers.get("authorization")
    if header is None or not header.strip():
        if query_token:
            if len(query_token) > MAX_CREDENTIAL_CHARS or not query_token.isascii():
                raise Unauthorized("malformed token parameter")
            return Presented(key=query_token)
        return None
    if len(header) > MAX_CREDENTIAL_CHARS or not header.isascii() or not header.isprintable():
        raise Unauthorized("malformed Authorization header")
    scheme, _, value = header.strip().partition(" ")
    value = value.strip()
    if not value:  # one word: Stability's ``Authorization: <key>``
        return Presented(key=scheme)
    if scheme.lower() == "bearer":
        return Presented(key=value)
    if scheme.lower() != "basic":
        raise Unauthorized(f"unsupported Authorization scheme {scheme[:20]!r}: send Bearer <key>")
    try:
        text = base64.b64decode(value, validate=True).decode("utf-8")
    except (binascii.Error, ValueError):  # UnicodeDecodeError is a ValueError
        raise Unauthorized("malformed Authorization header: Basic needs base64 of user:password") from None
    user, sep, password = text.partition(":")
    if not sep:
        raise Unauthorized("malformed Authorization header: Basic needs base64 of user:password")
    return Presented(user=user, password=password)


class KeyAuth(Authenticator):
    """API keys (``jobs.keys.KeyStore``). ``basic``: the ``--api-auth`` users, still accepted."""

    challenge = 'Bearer realm="sdgate", Basic realm="sdgate"'

    def __init__(
        self, keys: KeyStore, limits: Limits | None = None, *, basic: BasicAuth | None = None
    ) -> None:
        self.keys = keys
        self.limits = limits or Limits()
        self.basic = basic

    def authenticate(self, headers: Headers, query_token: str | None = None) -> Principal:
        found = self._secret(headers, query_token)
        return found if isinstance(found, Principal) else self.principal(self.keys.verify(found))

    async def authenticate_async(self, headers: Headers, query_token: str | None = None) -> Principal:
        found = self._secret(headers, query_token)
        if isinstance(found, Principal):
            return found
        key = self.keys.verify_cached(found)  # no query while the answer is fresh
        if key is None:
            key = await run_in_threadpool(self.keys.verify, found)
        return self.principal(key)

    def _secret(self, headers: Headers, query_token: str | None) -> Principal | str:
        """The key to verify, or the principal of an ``--api-auth`` user."""
        presented = read_credentials(headers, query_token)
        if presented is None:
            raise Unauthorized("Not authenticated: send an API key (Authorization: Bearer <key>)")
        if presented.key is not None:
            return presented.key
        user, password = presented.user or "", presented.password or ""
        if self.basic is not None and self.basic.knows(user):
            return self.basic.authenticate(headers)
        return password or user  # webuiapi's set_auth: the key as the password, or as the user

    def principal(self, key: ApiKey) -> Principal:
        own = Limits(
            max_queued_jobs=key.limits.max_concurrent, rate_per_min=key.limits.rate_per_min,
            rate_burst=key.limits.rate_burst, images_per_day=key.limits.images_per_day,
            gpu_seconds_per_day=key.limits.gpu_seconds_per_day,
        )
        return Principal(id=key.id, scopes=frozenset(key.scopes), limits=own.tightest(self.limits),
                         key_id=key.id, key_prefix=key.prefix, name=key.name)


class AutoAuth(Authenticator):
    """``--auth auto``: ``keys`` from the first key on (looked for at start, then at most every
    ``recheck_s`` seconds while there is none; once on, on for good: revoking every key must not
    open the server), ``fallback`` until then (Basic with ``--api-auth``, else anonymous)."""

    def __init__(self, keys: KeyAuth, fallback: Authenticator, *, recheck_s: float = AUTO_RECHECK_S) -> None:
        self.keys = keys
        self.fallback = fallback
        self.recheck_s = recheck_s
        self.keys_on = False
        self._next_check = 0.0

    @property
    def challenge(self) -> str | None:  # type: ignore[override]
        return (self.keys if self.keys_on else self.fallback).challenge

    def refresh(self) -> bool:
        """Looks for a key now (blocking: at start, or from a thread)."""
        self._next_check = time.monotonic() + self.recheck_s
        self.keys_on = self.keys_on or self.keys.keys.any_keys()
        return self.keys_on

    def authenticate(self, headers: Headers, query_token: str | None = None) -> Principal:
        if not self.keys_on and time.monotonic() >= self._next_check:
            self.refresh()
        return (self.keys if self.keys_on else self.fallback).authenticate(headers, query_token)

    async def authenticate_async(self, headers: Headers, query_token: str | None = None) -> Principal:
        if not self.keys_on and time.monotonic() >= self._next_check:
            self._next_check = time.monotonic() + self.recheck_s  # one look per period, not per request
            await run_in_threadpool(self.refresh)
        return await (self.keys if self.keys_on else self.fallback).authenticate_async(headers, query_token)


class RefuseAll(Authenticator):
    """``--auth keys`` before the key store is open (an app served without its lifespan)."""

    challenge = KeyAuth.challenge

    def authenticate(self, headers: Headers, query_token: str | None = None) -> Principal:
        raise Unauthorized("API keys are not available yet: the server is starting")


def authenticator_for(settings: Settings, keys: KeyStore | None = None) -> Authenticator:
    """The one authenticator a server runs with, by ``--auth``: ``none`` (anonymous), ``basic``
    (``--api-auth``, required), ``keys`` (and the ``--api-auth`` users), ``auto`` (``AutoAuth``;
    without ``keys``, which only the running server has: Basic or anonymous). Every principal
    carries the server's per-principal limits. ``ValueError`` for ``--auth basic`` without users."""
    limits = Limits(max_queued_jobs=settings.max_queued_per_principal)
    credentials = settings.auth_pairs()
    basic = BasicAuth(credentials, limits) if credentials else None
    if settings.auth == "none":
        return AnonymousAuth(limits)
    if settings.auth == "basic":
        if basic is None:
            raise ValueError("--auth basic needs --api-auth user:pass[,user2:pass2]")
        return basic
    if keys is None:
        return RefuseAll() if settings.auth == "keys" else basic or AnonymousAuth(limits)
    key_auth = KeyAuth(keys, limits, basic=basic)
    if settings.auth == "keys":
        return key_auth
    return AutoAuth(key_auth, basic or AnonymousAuth(limits))


def key_store(services: Services) -> KeyStore:
    """The server's one ``KeyStore`` (its verification cache shared by the authenticator and the
    admin API, so a revoke through the API takes effect here at once)."""
    from sdgate.jobs.keys import KEY_CACHE_S, KeyStore

    return services.state.setdefault(KeyStore, lambda: KeyStore(services.database, cache_s=KEY_CACHE_S))


def start_authenticator(settings: Settings, services: Services) -> Authenticator:
    """The authenticator of a server that has started (its key store open), with a log line that
    says how callers are told apart."""
    authenticator = authenticator_for(settings, key_store(services))
    if isinstance(authenticator, AutoAuth):
        authenticator.refresh()
        mode = "API keys" if authenticator.keys_on else (
            "HTTP Basic (--api-auth) until an API key exists" if authenticator.fallback.challenge
            else "none until an API key exists (sdgate keys create)")
        log.info("authentication: %s", mode)
    elif isinstance(authenticator, KeyAuth):
        if not authenticator.keys.any_keys():
            log.warning("authentication: API keys, and none exists yet: every request is refused "
                        "until one is made (sdgate keys create --name NAME --scopes admin)")
        else:
            log.info("authentication: API keys")
    else:
        log.info("authentication: %s", "HTTP Basic" if authenticator.challenge else "none")
    return authenticator


# -- what a route needs --------------------------------------------------------------------------

READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# Routes only an ``admin`` key may call, by path prefix: the keys and audit admin APIs, and the
# routes that stop the server. (A1111's POST /options is ``generate``: options are per principal.)
# Routes that act on the whole server, not on the caller's own jobs: keys, the audit log, stopping
# the server, and dropping or reloading the loaded model under everyone's running jobs.
ADMIN_PATHS = ("/api/v1/keys", "/api/v1/audit", "/sdapi/v1/server-stop", "/sdapi/v1/server-kill",
               "/sdapi/v1/server-restart", "/sdapi/v1/unload-checkpoint", "/sdapi/v1/reload-checkpoint")


def required_scope(method: str, path: str) -> str:
    """The scope a request needs: ``admin`` under ``ADMIN_PATHS``; else ``read`` to look (GET, HEAD,
    OPTIONS, and every WebSocket) and ``generate`` to change anything (any other method)."""
    if any(path == p or path.startswith(p + "/") for p in ADMIN_PATHS):
        return "admin"
    return "read" if method.upper() in READ_METHODS else "generate"


def public_paths(endpoints: Iterable[str]) -> frozenset[str]:
    """``--public-endpoint`` names as paths (``healthz`` -> ``/healthz``)."""
    return frozenset("/" + name.strip("/") for name in endpoints)


class AuthMiddleware:
    """Authenticates every HTTP and WebSocket request except the public ones (``public``: by default
    the health checks; signed image links always; A1111 leaves /loras open, we do not) and checks
    its scope. Installed on every server, with or without credentials, so every route sees the
    principal the authenticator made, with its limits. The authenticator is the app's
    ``state.authenticator`` once the server started (it needs the key store), else the one given."""

    def __init__(self, app: ASGIApp, authenticator: Authenticator,
                 public: Iterable[str] = DEFAULT_PUBLIC_ENDPOINTS) -> None:
        self.app = app
        self.authenticator = authenticator
        self.public = public_paths(public)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path, root = scope.get("path", ""), scope.get("root_path", "")
        if root and path.startswith(root):
            path = path[len(root):]  # behind a proxy's prefix: the path the routes see
        if scope["type"] not in ("http", "websocket") or path in self.public or path.startswith(
            _PUBLIC_PREFIXES
        ):
            await self.app(scope, receive, send)
            return
        authenticator = self.current(scope)
        try:
            principal = await authenticator.authenticate_async(Headers(scope=scope), query_token(scope))
            # Known from here on, also for a scope refusal (the audit log names who was refused).
            scope.setdefault("state", {})[_SCOPE_KEY] = principal
            needed = required_scope(scope.get("method", "GET"), path)
            if not principal.allows(needed):
                raise Forbidden(f"this key's scopes ({', '.join(sorted(principal.scopes))}) do not include "
                                f"{needed!r}, which {scope.get('method', 'GET')} {path[:200]} needs")
        except SdgateError as exc:
            await self._deny(scope, receive, send, exc, authenticator)
            return
        await self.app(scope, receive, send)

    def current(self, scope: Scope) -> Authenticator:
        state = getattr(scope.get("app"), "state", None)
        found = getattr(state, "authenticator", None)
        return found if isinstance(found, Authenticator) else self.authenticator

    async def _deny(self, scope: Scope, receive: Receive, send: Send, err: SdgateError,
                    authenticator: Authenticator) -> None:
        if scope["type"] == "websocket":
            await refuse(scope, receive, send, err)  # closed with 1008 before it is accepted
            return
        response = refusal_response(scope, err)
        if isinstance(err, Unauthorized) and authenticator.challenge:
            response.headers["WWW-Authenticate"] = authenticator.challenge
        await response(scope, receive, send)


def query_token(scope: Scope) -> str | None:
    """The ``token`` query parameter (ComfyUI's form; a browser WebSocket's only one)."""
    raw: bytes = scope.get("query_string", b"")
    if b"token=" not in raw:
        return None
    for name, value in parse_qsl(raw.decode("latin-1"), keep_blank_values=True):
        if name == QUERY_TOKEN:
            return value
    return None


def current_principal(scope: Scope) -> Principal:
    """The principal ``AuthMiddleware`` left in ``scope``; anonymous (without limits) where none
    ran (a public path, or an app built without the middleware)."""
    principal = scope.get("state", {}).get(_SCOPE_KEY)
    return principal if isinstance(principal, Principal) else ANONYMOUS


# -- no secret in a log ----------------------------------------------------------------------------

_SECRET_PARAM = re.compile(r"(?i)\b(token|api_key|apikey|key|access_token)=[^&\s\"']*")
_KEY_TEXT = re.compile(r"sdg_[A-Za-z0-9_-]{8,}")


def redact(text: str) -> str:
    """``text`` with query parameters that carry credentials and anything shaped like a key hidden."""
    return _KEY_TEXT.sub("sdg_[redacted]", _SECRET_PARAM.sub(r"\1=[redacted]", text))


class RedactSecrets(logging.Filter):
    """Hides credentials in a record's message and arguments (uvicorn's access log writes the path
    with its query string, where ComfyUI-style clients put ``?token=``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = redact(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(redact(a) if isinstance(a, str) else a for a in record.args)
        return True


def install_log_redaction(names: Iterable[str] = ("uvicorn.access", "uvicorn.error", "uvicorn")) -> None:
    """Puts ``RedactSecrets`` on the loggers that print request lines (once each)."""
    for name in names:
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactSecrets) for f in logger.filters):
            logger.addFilter(RedactSecrets())
