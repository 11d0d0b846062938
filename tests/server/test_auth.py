"""One authenticator per server turns credentials into a ``Principal`` (issues 14 and 16): Basic
from ``--api-auth``, API keys, anonymous otherwise; credentials in every form clients send them,
malformed ones a 401; the scope each request needs; no secret in the access log."""

from __future__ import annotations

import base64
import logging
from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from sdgate.core.errors import Unauthorized
from sdgate.server.auth import (
    ANONYMOUS,
    BASIC_SCOPES,
    AnonymousAuth,
    AuthMiddleware,
    BasicAuth,
    Limits,
    Presented,
    Principal,
    authenticator_for,
    current_principal,
    query_token,
    read_credentials,
    redact,
    required_scope,
)
from sdgate.settings import Settings


def basic(user: str, password: str) -> Headers:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return Headers({"authorization": f"Basic {token}"})


def test_anonymous_is_everyones_owner() -> None:
    assert AnonymousAuth().authenticate(Headers({})) is ANONYMOUS
    assert ANONYMOUS.id is None and ANONYMOUS.anonymous and ANONYMOUS.allows("jobs:write")


def test_basic_user_is_the_owner() -> None:
    auth = BasicAuth({"alice": "s3cret"})
    principal = auth.authenticate(basic("alice", "s3cret"))
    assert principal == Principal(id="alice", scopes=BASIC_SCOPES) and not principal.anonymous
    # A Basic user sees its own jobs only; the anonymous principal of an open server sees all.
    assert not principal.is_admin and principal.owner_filter == "alice" and not principal.owns("bob")
    assert ANONYMOUS.is_admin and ANONYMOUS.owner_filter is None


@pytest.mark.parametrize(
    ("headers", "detail"),
    [
        (Headers({}), "Not authenticated"),
        (basic("alice", "wrong"), "Incorrect username or password"),
        (basic("mallory", "s3cret"), "Incorrect username or password"),
        (Headers({"authorization": "Bearer abc"}), "Incorrect username or password"),
        (Headers({"authorization": "Basic !!!"}), "Incorrect username or password"),
    ],
)
def test_basic_refusals(headers: Headers, detail: str) -> None:
    with pytest.raises(Unauthorized) as info:
        BasicAuth({"alice": "s3cret"}).authenticate(headers)
    assert info.value.message == detail


def test_authenticator_for_settings(tmp_path: Path) -> None:
    assert isinstance(authenticator_for(Settings(data_dir=tmp_path, api_auth="a:b")), BasicAuth)
    assert isinstance(authenticator_for(Settings(data_dir=tmp_path)), AnonymousAuth)
    assert authenticator_for(Settings(data_dir=tmp_path)).authenticate(Headers({})) is ANONYMOUS


def test_every_principal_carries_the_servers_limits(tmp_path: Path) -> None:
    limited = Settings(data_dir=tmp_path, api_auth="alice:s3cret,bob:pw", max_queued_per_principal=2)
    auth = authenticator_for(limited)
    expected = Principal(id="alice", scopes=BASIC_SCOPES, limits=Limits(2))
    assert auth.authenticate(basic("alice", "s3cret")) == expected
    assert auth.authenticate(basic("bob", "pw")).limits.max_queued_jobs == 2
    anonymous = authenticator_for(Settings(data_dir=tmp_path, max_queued_per_principal=3))
    principal = anonymous.authenticate(Headers({}))
    assert principal.anonymous and principal.limits == Limits(max_queued_jobs=3)


async def _whoami(request: Request) -> JSONResponse:
    return JSONResponse({"id": current_principal(request.scope).id})


async def test_middleware_leaves_the_principal_and_refuses_in_the_default_shape() -> None:
    app = Starlette(routes=[Route("/who", _whoami), Route("/healthz", _whoami)])
    wrapped = AuthMiddleware(app, BasicAuth({"alice": "s3cret"}))
    transport = httpx.ASGITransport(app=wrapped)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        ok = await client.get("/who", auth=("alice", "s3cret"))
        assert ok.json() == {"id": "alice"}
        denied = await client.get("/who")  # no dialect owns the route: the native (server) shape
        assert denied.status_code == 401
        assert denied.json() == {"error": {"code": "unauthorized", "message": "Not authenticated"}}
        assert denied.headers["www-authenticate"] == "Basic"
        assert (await client.get("/healthz")).json() == {"id": None}  # public: anonymous


async def test_public_endpoints_are_configurable() -> None:
    app = Starlette(routes=[Route("/metrics", _whoami), Route("/healthz", _whoami)])
    wrapped = AuthMiddleware(app, BasicAuth({"alice": "s3cret"}), public=["metrics"])
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=wrapped), base_url="http://t") as client:
        assert (await client.get("/metrics")).status_code == 200
        assert (await client.get("/healthz")).status_code == 401  # not listed: closed


# -- credentials as clients send them ------------------------------------------------------------


def _h(value: str | bytes) -> Headers:
    raw = value if isinstance(value, bytes) else value.encode("latin-1")
    return Headers(raw=[(b"authorization", raw)])


@pytest.mark.parametrize(
    ("header", "token", "expected"),
    [
        (None, None, None),
        ("Bearer sdg_abc", None, Presented(key="sdg_abc")),
        ("bearer   sdg_abc  ", None, Presented(key="sdg_abc")),
        ("sdg_abc", None, Presented(key="sdg_abc")),  # Stability's bare key
        (None, "sdg_q", Presented(key="sdg_q")),  # ComfyUI's ?token=
        ("Bearer sdg_h", "sdg_q", Presented(key="sdg_h")),  # the header wins
        (basic("me", "sdg_pw")["authorization"], None, Presented(user="me", password="sdg_pw")),
        (basic("sdg_user", "")["authorization"], None, Presented(user="sdg_user", password="")),
    ],
)
def test_credentials_in_every_form(header: str | None, token: str | None, expected: Presented | None) -> None:
    headers = Headers({}) if header is None else _h(header)
    assert read_credentials(headers, token) == expected


@pytest.mark.parametrize(
    "header",
    [
        "Basic !!!",
        "Basic " + base64.b64encode(b"no-colon").decode(),
        "Basic " + base64.b64encode(b"\xff\xfe:x").decode(),
        b"Bearer sdg_\xe9\xe9",  # not ASCII
        "Bearer " + "a" * 10_000,  # huge
        "Bearer sdg_a\x01b",  # a control character
        "Digest username=x",
        "Token a b c",
    ],
)
def test_a_malformed_header_is_unauthorized_never_an_error(header: str | bytes) -> None:
    with pytest.raises(Unauthorized):
        read_credentials(_h(header))
    with pytest.raises(Unauthorized):
        BasicAuth({"alice": "s3cret"}).authenticate(_h(header))


def test_a_huge_query_token_is_unauthorized() -> None:
    with pytest.raises(Unauthorized):
        read_credentials(Headers({}), "sdg_" + "a" * 10_000)
    scope = {"query_string": b"a=1&token=sdg_x%2By&b=2"}
    assert query_token(scope) == "sdg_x+y"
    assert query_token({"query_string": b"tokens=1"}) is None


# -- scopes ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "scope"),
    [
        ("GET", "/api/v1/jobs", "read"),
        ("HEAD", "/sdapi/v1/options", "read"),
        ("OPTIONS", "/v1/models", "read"),
        ("POST", "/api/v1/jobs", "generate"),
        ("DELETE", "/api/v1/jobs/j1", "generate"),
        ("POST", "/sdapi/v1/options", "generate"),  # per principal: not the server's
        ("GET", "/api/v1/keys", "admin"),
        ("POST", "/api/v1/keys/key_1/rotate", "admin"),
        ("GET", "/api/v1/audit", "admin"),
        ("POST", "/sdapi/v1/server-stop", "admin"),
        ("GET", "/api/v1/keysmith", "read"),  # a prefix of a word is not the admin path
    ],
)
def test_required_scope(method: str, path: str, scope: str) -> None:
    assert required_scope(method, path) == scope


def test_admin_includes_every_scope() -> None:
    admin = Principal(id="k", scopes=frozenset({"admin"}))
    assert admin.allows("generate") and admin.allows("read") and admin.is_admin
    reader = Principal(id="r", scopes=frozenset({"read"}))
    assert reader.allows("read") and not reader.allows("generate") and not reader.is_admin


# -- no secret in a log --------------------------------------------------------------------------


def test_redaction_hides_tokens_and_keys() -> None:
    line = 'GET /ws?clientId=1&token=sdg_abcdefghijklmnop&x=2 HTTP/1.1'
    assert redact(line) == 'GET /ws?clientId=1&token=[redacted]&x=2 HTTP/1.1'
    assert redact("key sdg_abcdefghijklmnopq used") == "key sdg_[redacted] used"
    assert redact("/api/v1/jobs?state=queued") == "/api/v1/jobs?state=queued"


def test_the_access_log_never_shows_a_key(tmp_path: Path) -> None:
    from sdgate.server.app import create_app

    create_app(Settings(data_dir=tmp_path))  # installs the filter on uvicorn's loggers
    key = "sdg_" + "k" * 43
    lines: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: lines.append(record.getMessage())  # type: ignore[method-assign]
    # A handler on the loggers themselves: an earlier in-process uvicorn may have set
    # propagate=False on them (its logging config does), so the root logger would see nothing.
    loggers = [logging.getLogger(name) for name in ("uvicorn.access", "uvicorn.error")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
    try:
        # The line uvicorn's access log writes: the path with its query string.
        path = f"/ws?clientId=1&token={key}"
        loggers[0].info('%s - "%s %s HTTP/%s" %d', "127.0.0.1:5", "GET", path, "1.1", 101)
        loggers[1].info("connection from %s", f"/api/v1/jobs?token={key}")
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.removeHandler(handler)
            logger.setLevel(level)
    text = "\n".join(lines)
    assert len(lines) == 2 and text.count("token=[redacted]") == 2, text
    assert key not in text and "k" * 20 not in text


async def test_the_scope_rule_sees_the_path_behind_a_proxy_prefix() -> None:
    app = Starlette(routes=[Route("/api/v1/keys", _whoami), Route("/healthz", _whoami)])
    auth = BasicAuth({"alice": "s3cret"})  # generate + read: no admin
    wrapped = AuthMiddleware(app, auth)
    transport = httpx.ASGITransport(app=wrapped, root_path="/sd")
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        r = await client.get("/sd/api/v1/keys", auth=("alice", "s3cret"))
        assert r.status_code == 403
        assert (await client.get("/sd/healthz")).status_code == 200  # public there too
