"""One authenticator per server turns credentials into a ``Principal`` (issue 14): Basic from
``--api-auth``, anonymous otherwise; the 401s keep their shape."""

from __future__ import annotations

import base64
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
    Principal,
    authenticator_for,
    current_principal,
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


async def test_middleware_leaves_the_principal_and_keeps_the_401_shape() -> None:
    app = Starlette(routes=[Route("/who", _whoami), Route("/healthz", _whoami)])
    wrapped = AuthMiddleware(app, BasicAuth({"alice": "s3cret"}))
    transport = httpx.ASGITransport(app=wrapped)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        ok = await client.get("/who", auth=("alice", "s3cret"))
        assert ok.json() == {"id": "alice"}
        denied = await client.get("/who")
        assert denied.status_code == 401 and denied.json() == {"detail": "Not authenticated"}
        assert denied.headers["www-authenticate"] == "Basic"
        assert (await client.get("/healthz")).json() == {"id": None}  # public: anonymous
