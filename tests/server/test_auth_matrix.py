"""Every route of the app (each dialect's HTTP routes, the SSE stream, image links, the WebSocket,
the server's own) x {no key, malformed header, wrong key, revoked key, expired key, a key without
the scope, the right key}: 401 / 403 / neither, each refusal in the body shape of the dialect that
owns the route and saying which (revoked, expired), each key sent in the form that dialect's clients
send it (issue 16). The routes come from the app's route table, so a route added later is covered
without editing this file; the shape table below must know its dialect's route class."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.routing import iter_route_contexts
from starlette.routing import Mount, WebSocketRoute
from starlette.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from sdgate.jobs.database import create_db_engine, ensure_schema
from sdgate.jobs.keys import KeyStore
from sdgate.server.app import create_app
from sdgate.server.auth import required_scope
from sdgate.server.errors import DialectRoute
from sdgate.settings import Settings
from tests.fakes import FakeEngine

Body = dict[str, Any]


def _native(body: Body, code: str) -> bool:
    return body["error"]["code"] == code and bool(body["error"]["message"])


def _a1111(body: Body, code: str) -> bool:
    name = {"unauthorized": "Unauthorized", "forbidden": "Forbidden"}[code]
    return body["error"] == name and bool(body["detail"]) and set(body) == {"error", "detail", "body",
                                                                            "errors"}


def _openai(body: Body, code: str) -> bool:
    err = body["error"]
    return {"message", "type", "code"} <= set(err) and bool(err["message"]) and isinstance(err["code"], str)


def _stability_v1(body: Body, code: str) -> bool:
    return set(body) == {"id", "name", "message"} and bool(body["message"])


def _stability_v2(body: Body, code: str) -> bool:
    return set(body) == {"id", "name", "errors"} and bool(body["errors"][0])


def _hf(body: Body, code: str) -> bool:
    return set(body) == {"error"} and isinstance(body["error"], str) and bool(body["error"])


def _comfy(body: Body, code: str) -> bool:
    return body["error"]["type"] == code and bool(body["error"]["message"]) and "node_errors" in body


# The error shape of each route class; routes of no dialect (docs, OpenAPI) answer the native one.
SHAPES: dict[str, Callable[[Body, str], bool]] = {
    "NativeRoute": _native,
    "HealthRoute": _native,
    "A1111Route": _a1111,
    "OpenAIRoute": _openai,
    "StabilityV1Route": _stability_v1,
    "StabilityV2Route": _stability_v2,
    "HfRoute": _hf,
    "ComfyRoute": _comfy,
}
OTHER = _native


@dataclass(frozen=True)
class Case:
    method: str  # WS for a WebSocket
    path: str
    route_class: str
    dialect: bool = False  # a DialectRoute: its dialect renders its errors

    @property
    def id(self) -> str:
        return f"{self.method} {self.path}"


def _concrete(path: str) -> str:
    """A route's path with each parameter filled in (a path parameter may hold slashes)."""
    return re.sub(r"\{([^}:]+)(:path)?\}", lambda m: "org/model" if m.group(2) else f"x_{m.group(1)}", path)


def _cases() -> list[Case]:
    app = create_app(Settings(data_dir=Path("/nonexistent-never-started")))
    found: list[Case] = []
    for context in iter_route_contexts(app.router.routes):
        route = getattr(context, "original_route", context)
        if isinstance(route, Mount) or context.path is None:
            continue  # the docs' static files: one Mount, covered by /docs
        if isinstance(route, WebSocketRoute) or type(route).__name__ == "APIWebSocketRoute":
            found.append(Case("WS", _concrete(context.path), type(route).__name__))
            continue
        for method in sorted((context.methods or set()) - {"HEAD"}):
            found.append(Case(method, _concrete(context.path), type(route).__name__,
                              isinstance(route, DialectRoute)))
    return found


CASES = _cases()
PUBLIC = ("/healthz", "/readyz", "/v1/images/files/", "/", "/ui")  # the web UI page holds no data


def test_the_table_has_every_dialect() -> None:
    classes = {case.route_class for case in CASES}
    assert {"NativeRoute", "A1111Route", "OpenAIRoute", "StabilityV1Route", "StabilityV2Route", "HfRoute",
            "HealthRoute"} <= classes
    assert any(c.method == "WS" for c in CASES) and any(c.path.endswith("/events") for c in CASES)
    assert any(c.path.startswith("/api/v1/keys") for c in CASES)
    unknown = {c.route_class for c in CASES if c.dialect and c.route_class not in SHAPES}
    assert not unknown, f"add these route classes' error shapes to SHAPES: {unknown}"


@dataclass
class Keys:
    admin: str
    reader: str  # read only
    writer: str  # generate only
    user: str  # generate + read: every route but the admin ones
    revoked: str
    expired: str
    wrong: str = "sdg_" + "W" * 43


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TestClient, Keys]]:
    tmp = tmp_path_factory.mktemp("matrix")
    from tests.fakes import write_fake_checkpoint

    write_fake_checkpoint(tmp / "models" / "Stable-diffusion" / "alpha.safetensors")
    settings = Settings(data_dir=tmp / "data", models_dir=tmp / "models", device="cpu", auth="keys",
                        worker_poll_s=0.05)
    engine = create_db_engine(settings.database_url)
    ensure_schema(engine)
    store = KeyStore(engine)
    keys = Keys(
        admin=store.create("admin", scopes=["admin"]).secret,
        reader=store.create("reader", scopes=["read"]).secret,
        writer=store.create("writer", scopes=["generate"]).secret,
        user=store.create("user", scopes=["generate", "read"]).secret,
        revoked=store.create("revoked", scopes=["generate", "read", "admin"]).secret,
        expired=store.create("expired", scopes=["generate", "read", "admin"],
                             expires_at=datetime.now(UTC) - timedelta(hours=1)).secret,
    )
    store.revoke("revoked")
    engine.dispose()
    app = create_app(settings, engine=FakeEngine(slow_step_s=0.0))
    with TestClient(app, base_url="http://sdgate", raise_server_exceptions=False) as client:
        yield client, keys


def credentials(case: Case, key: str) -> tuple[dict[str, str], dict[str, str]]:
    """(headers, query) carrying ``key`` as the route's dialect's clients send it."""
    if case.method == "WS":
        return {}, {"token": key}  # a browser's WebSocket can send nothing else
    if case.route_class == "A1111Route":
        import base64

        return {"Authorization": "Basic " + base64.b64encode(f"webui:{key}".encode()).decode()}, {}
    if case.route_class.startswith("Stability"):
        return {"Authorization": key}, {}  # the bare key, as Stability's clients send it
    return {"Authorization": f"Bearer {key}"}, {}


def call(client: TestClient, case: Case, headers: dict[str, str], query: dict[str, str]) -> tuple[int, Any]:
    """The status (for a WebSocket: 101 accepted, or its close code) and the JSON body."""
    if case.method == "WS":
        try:
            with client.websocket_connect(case.path, headers=headers, params=query):
                return 101, None
        except WebSocketDisconnect as exc:
            return exc.code, None
    # A body no route accepts: a right key gets a 4xx from the route, and nothing runs.
    content = b"{not json" if case.method in ("POST", "PUT", "PATCH", "DELETE") else None
    r = client.request(case.method, case.path, headers={**headers, "Content-Type": "application/json"},
                       params=query, content=content)
    try:
        body = r.json()
    except ValueError:
        body = None
    return r.status_code, body


def wrong_scope_key(case: Case, keys: Keys) -> str:
    needed = required_scope("GET" if case.method == "WS" else case.method, case.path)
    return {"read": keys.writer, "generate": keys.reader, "admin": keys.user}[needed]


def right_key(case: Case, keys: Keys) -> str:
    needed = required_scope("GET" if case.method == "WS" else case.method, case.path)
    return keys.admin if needed == "admin" else keys.user


SITUATIONS: dict[str, Callable[[Case, Keys], tuple[dict[str, str], dict[str, str]]]] = {
    "no key": lambda case, keys: ({}, {}),
    "malformed header": lambda case, keys: ({"Authorization": "Basic !!not-base64!!"}, {}),
    "wrong key": lambda case, keys: credentials(case, keys.wrong),
    "revoked key": lambda case, keys: credentials(case, keys.revoked),
    "expired key": lambda case, keys: credentials(case, keys.expired),
    "key without the scope": lambda case, keys: credentials(case, wrong_scope_key(case, keys)),
    "right key": lambda case, keys: credentials(case, right_key(case, keys)),
}
REFUSED = {"revoked key": "revoked", "expired key": "expired"}


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_every_route_x_every_credential(server: tuple[TestClient, Keys], case: Case) -> None:
    client, keys = server
    public = case.path in PUBLIC or case.path.startswith(PUBLIC[2])
    shape = SHAPES.get(case.route_class, OTHER)
    answers = {name: call(client, case, *make(case, keys)) for name, make in SITUATIONS.items()}
    if public:  # the signature (image links) or nothing (health) is the credential: all alike
        assert len({status for status, _ in answers.values()}) == 1, answers
        return
    for situation, (status, body) in answers.items():
        where = f"{case.id} with {situation}: {status} {body}"
        if situation == "right key":
            assert status not in (401, 403, 1008), where
            continue
        if case.method == "WS":
            assert status == 1008, where  # closed before it is accepted: policy violation
            continue
        expected = 403 if situation == "key without the scope" else 401
        assert status == expected, where
        code = "forbidden" if expected == 403 else "unauthorized"
        assert isinstance(body, dict) and shape(body, code), where
        if situation in REFUSED:
            assert REFUSED[situation] in str(body), where


def test_a_401_challenges_and_a_403_does_not(server: tuple[TestClient, Keys]) -> None:
    client, keys = server
    r = client.get("/api/v1/jobs")
    assert r.status_code == 401 and "Bearer" in r.headers["www-authenticate"]
    assert r.headers["x-request-id"]  # the refusal passed the request-id middleware
    r = client.post("/api/v1/jobs", headers={"Authorization": f"Bearer {keys.reader}"}, json={"prompt": "x"})
    assert r.status_code == 403 and "www-authenticate" not in r.headers
    assert "generate" in r.json()["error"]["message"]
