"""API keys (issue 16): the key store on SQLite and PostgreSQL (shown once, stored as a hash, a
unique prefix, revoke / rotate / expiry and the 401 message that says which, the verification
cache, last use), and the authenticators built on it (every form clients send a key in, a key's
limits under the server's, ``--auth auto`` turning keys on with the first key)."""

from __future__ import annotations

import base64
import hashlib
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from starlette.datastructures import Headers

from sdgate.core.errors import Conflict, InvalidRequest, NotFound, Unauthorized
from sdgate.jobs.database import create_db_engine, ensure_schema
from sdgate.jobs.keys import (
    KEY_PREFIX,
    PREFIX_LENGTH,
    KeyLimits,
    KeyStore,
    parse_expiry,
    parse_rate,
)
from sdgate.jobs.schema import api_keys
from sdgate.server.auth import (
    AnonymousAuth,
    AutoAuth,
    BasicAuth,
    KeyAuth,
    Limits,
    RefuseAll,
    authenticator_for,
)
from sdgate.settings import Settings
from tests.jobs.conftest import pg_server, services_required  # noqa: F401 - fixtures

T0 = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[sa.Engine]:
    if request.param == "sqlite":
        engine = create_db_engine(f"sqlite:///{tmp_path / 'keys.db'}")
        ensure_schema(engine)
        yield engine
        engine.dispose()
        return
    server = request.getfixturevalue("pg_server")
    with server.database() as url:
        engine = create_db_engine(url)
        yield engine
        engine.dispose()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def keys(database: sa.Engine, clock: Clock) -> KeyStore:
    return KeyStore(database, clock=clock)


def bearer(secret: str) -> Headers:
    return Headers({"authorization": f"Bearer {secret}"})


def basic(user: str, password: str) -> Headers:
    return Headers({"authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()})


def refusal(keys: KeyStore, secret: str) -> str:
    with pytest.raises(Unauthorized) as info:
        keys.verify(secret)
    return info.value.message


# -- the store -----------------------------------------------------------------------------------


def test_a_key_is_shown_once_and_stored_as_a_hash(keys: KeyStore, database: sa.Engine) -> None:
    made = keys.create("app1", scopes=["generate", "read"], limits=KeyLimits(rate_per_min=60))
    assert made.secret.startswith(KEY_PREFIX) and len(made.secret) >= 40
    assert made.key.prefix == made.secret[:PREFIX_LENGTH] and made.key.id.startswith("key_")
    with database.connect() as conn:
        row = conn.execute(sa.select(api_keys)).one()
    assert row.secret_hash == hashlib.sha256(made.secret.encode()).hexdigest()
    assert made.secret not in repr(tuple(row))  # only the prefix and the digest
    assert "secret_hash" not in made.key.public() and made.secret not in repr(made.key.public())
    found = keys.verify(made.secret)
    assert (found.id, found.name, found.scopes) == (made.key.id, "app1", ("generate", "read"))
    assert found.limits == KeyLimits(rate_per_min=60)
    other = keys.create("app2")
    assert other.key.prefix != made.key.prefix and other.secret != made.secret


def test_a_refusal_says_which(keys: KeyStore, clock: Clock) -> None:
    live = keys.create("live")
    assert refusal(keys, KEY_PREFIX + "x" * 43) == "invalid API key"
    assert refusal(keys, live.secret[:-1] + ("A" if live.secret[-1] != "A" else "B")) == "invalid API key"
    assert refusal(keys, "not a key at all") == "invalid API key"
    revoked = keys.create("gone")
    keys.revoke("gone")
    assert "revoked" in refusal(keys, revoked.secret)
    soon = keys.create("soon", expires_at=T0 + timedelta(hours=1))
    assert keys.verify(soon.secret).id == soon.key.id
    clock.now = T0 + timedelta(hours=2)
    assert "expired" in refusal(keys, soon.secret)
    assert keys.verify(live.secret).id == live.key.id


def test_rotate_keeps_the_id_and_drops_the_old_secret(keys: KeyStore) -> None:
    made = keys.create("app1", scopes=["read"], limits=KeyLimits(images_per_day=5))
    rotated = keys.rotate(made.key.prefix)
    assert rotated.key.id == made.key.id and rotated.key.prefix != made.key.prefix
    assert rotated.key.rotated_at is not None
    assert refusal(keys, made.secret) == "invalid API key"
    again = keys.verify(rotated.secret)
    assert again.id == made.key.id and again.scopes == ("read",)
    assert again.limits == KeyLimits(images_per_day=5)
    keys.revoke(made.key.id)
    with pytest.raises(Conflict):
        keys.rotate(made.key.id)


def test_find_by_id_name_prefix_or_key(keys: KeyStore) -> None:
    made = keys.create("app1")
    for ref in (made.key.id, "app1", made.key.prefix, made.secret):
        assert keys.find(ref).id == made.key.id
    with pytest.raises(NotFound):
        keys.find("nobody")
    with pytest.raises(Conflict):  # one active key per name
        keys.create("app1")
    keys.revoke("app1")
    second = keys.create("app1")
    assert keys.find("app1").id == second.key.id  # the active one
    keys.revoke(second.key.id)
    with pytest.raises(Conflict):  # two revoked ones: which?
        keys.find("app1")
    assert [k.name for k in keys.list()] == ["app1", "app1"]
    assert keys.list(include_revoked=False) == []


def test_bad_input_is_refused(keys: KeyStore) -> None:
    for kwargs in ({"scopes": ["root"]}, {"scopes": []}, {"limits": KeyLimits(rate_per_min=-1)}):
        with pytest.raises(InvalidRequest):
            keys.create("x", **kwargs)  # type: ignore[arg-type]
    with pytest.raises(InvalidRequest):
        keys.create(" ")


def test_any_keys_counts_revoked_ones(keys: KeyStore) -> None:
    assert not keys.any_keys()
    keys.create("first")
    keys.revoke("first")
    assert keys.any_keys()  # revoking the last key must not open the server


def test_last_used_is_written_at_most_once_a_minute(keys: KeyStore, clock: Clock) -> None:
    made = keys.create("app1")
    assert keys.get(made.key.id).last_used_at is None
    keys.verify(made.secret)
    assert keys.get(made.key.id).last_used_at == T0
    clock.now = T0 + timedelta(seconds=30)
    keys.verify(made.secret)
    assert keys.get(made.key.id).last_used_at == T0
    clock.now = T0 + timedelta(seconds=61)
    keys.verify(made.secret)
    assert keys.get(made.key.id).last_used_at == clock.now


def test_the_cache_bounds_how_long_a_revoke_takes(database: sa.Engine) -> None:
    server = KeyStore(database, cache_s=0.3)
    cli = KeyStore(database)  # ``sdgate keys revoke`` beside a running server
    made = cli.create("app1")
    assert server.verify(made.secret).id == made.key.id
    assert server.verify_cached(made.secret) is not None
    cli.revoke("app1")
    assert server.verify(made.secret).id == made.key.id  # cached: still accepted
    time.sleep(0.4)
    with pytest.raises(Unauthorized, match="revoked"):
        server.verify(made.secret)
    # Through the server's own store a revoke takes effect at once.
    other = server.create("app2")
    server.verify(other.secret)
    server.revoke(other.key.id)
    with pytest.raises(Unauthorized, match="revoked"):
        server.verify(other.secret)


def test_parsing_rates_and_expiry() -> None:
    assert parse_rate("60/min") == 60 and parse_rate("2/s") == 120 and parse_rate("600/h") == 10
    assert parse_rate("30") == 30 and parse_rate("1440/day") == 1
    assert parse_expiry("90d", T0) == T0 + timedelta(days=90)
    assert parse_expiry("12h", T0) == T0 + timedelta(hours=12)
    assert parse_expiry("2027-01-01", T0) == datetime(2027, 1, 1, tzinfo=UTC)
    for bad in ("fast", "60/fortnight", "-1/min"):
        with pytest.raises(InvalidRequest):
            parse_rate(bad)
    for bad in ("soon", "2020-01-01", "0d"):
        with pytest.raises(InvalidRequest):
            parse_expiry(bad, T0)


# -- the authenticators ----------------------------------------------------------------------------


def test_every_form_a_client_sends(keys: KeyStore) -> None:
    made = keys.create("app1", scopes=["generate", "read"])
    auth = KeyAuth(keys)
    forms = [
        (bearer(made.secret), None),
        (Headers({"authorization": made.secret}), None),  # Stability: the bare key
        (basic("anyone", made.secret), None),  # webuiapi set_auth: the key as the password
        (basic(made.secret, ""), None),  # or as the user name
        (Headers({}), made.secret),  # ComfyUI: ?token=
    ]
    for headers, token in forms:
        principal = auth.authenticate(headers, token)
        assert principal.id == made.key.id == principal.key_id
        assert principal.key_prefix == made.key.prefix and principal.name == "app1"
        assert principal.scopes == frozenset({"generate", "read"}) and not principal.is_admin
    for headers, token in [(Headers({}), None), (bearer("sdg_" + "q" * 43), None), (basic("a", "b"), None)]:
        with pytest.raises(Unauthorized):
            auth.authenticate(headers, token)


async def test_the_async_path_uses_the_cache(database: sa.Engine) -> None:
    keys = KeyStore(database, cache_s=30)
    made = keys.create("app1")
    auth = KeyAuth(keys)
    assert (await auth.authenticate_async(bearer(made.secret))).id == made.key.id  # a query, in a thread
    assert keys.verify_cached(made.secret) is not None
    assert (await auth.authenticate_async(bearer(made.secret))).id == made.key.id  # no query
    keys.revoke(made.key.id)
    with pytest.raises(Unauthorized, match="revoked"):
        await auth.authenticate_async(bearer(made.secret))


def test_a_keys_limits_are_tightened_by_the_servers(keys: KeyStore) -> None:
    made = keys.create("app1", limits=KeyLimits(rate_per_min=60, images_per_day=500, max_concurrent=8,
                                                gpu_seconds_per_day=100, rate_burst=5))
    principal = KeyAuth(keys, Limits(max_queued_jobs=4)).authenticate(bearer(made.secret))
    assert principal.limits == Limits(max_queued_jobs=4, rate_per_min=60, rate_burst=5, images_per_day=500,
                                      gpu_seconds_per_day=100)
    free = keys.create("free")
    assert KeyAuth(keys, Limits(max_queued_jobs=4)).authenticate(bearer(free.secret)).limits == Limits(4)


def test_api_auth_users_keep_working_beside_keys(keys: KeyStore) -> None:
    made = keys.create("app1")
    auth = KeyAuth(keys, basic=BasicAuth({"alice": "s3cret"}))
    assert auth.authenticate(basic("alice", "s3cret")).id == "alice"
    with pytest.raises(Unauthorized, match="Incorrect"):
        auth.authenticate(basic("alice", made.secret))  # alice is a user: her password, not a key
    assert auth.authenticate(basic("bob", made.secret)).id == made.key.id


def test_auto_turns_keys_on_with_the_first_key(keys: KeyStore) -> None:
    auto = AutoAuth(KeyAuth(keys), AnonymousAuth(), recheck_s=0.0)
    assert auto.refresh() is False
    assert auto.authenticate(Headers({})).anonymous and auto.challenge is None
    made = keys.create("first")
    with pytest.raises(Unauthorized):
        auto.authenticate(Headers({}))  # looked again: keys are on
    assert auto.keys_on and auto.authenticate(bearer(made.secret)).id == made.key.id
    assert auto.challenge is not None and "Bearer" in auto.challenge
    keys.revoke("first")
    with pytest.raises(Unauthorized):
        auto.authenticate(Headers({}))  # and stay on


def test_auto_looks_again_at_most_every_recheck(keys: KeyStore) -> None:
    auto = AutoAuth(KeyAuth(keys), BasicAuth({"alice": "pw"}), recheck_s=3600)
    auto.refresh()
    keys.create("first")
    assert auto.authenticate(basic("alice", "pw")).id == "alice"  # not looked yet: Basic
    auto.refresh()
    assert auto.keys_on


def test_authenticator_for_each_mode(keys: KeyStore, tmp_path: Path) -> None:
    def make(**kw: object) -> Settings:
        return Settings(data_dir=tmp_path, **kw)  # type: ignore[arg-type]

    assert isinstance(authenticator_for(make(auth="none", api_auth="a:b"), keys), AnonymousAuth)
    assert isinstance(authenticator_for(make(auth="basic", api_auth="a:b"), keys), BasicAuth)
    with pytest.raises(ValueError, match="--api-auth"):
        authenticator_for(make(auth="basic"), keys)
    only_keys = authenticator_for(make(auth="keys", api_auth="a:b"), keys)
    assert isinstance(only_keys, KeyAuth) and only_keys.basic is not None
    assert isinstance(authenticator_for(make(auth="keys")), RefuseAll)  # no key store yet
    auto = authenticator_for(make(max_queued_per_principal=2), keys)
    assert isinstance(auto, AutoAuth) and isinstance(auto.fallback, AnonymousAuth)
    assert auto.keys.limits == Limits(max_queued_jobs=2)
    assert isinstance(authenticator_for(make(api_auth="a:b"), keys).fallback, BasicAuth)  # type: ignore[attr-defined]


# -- the admin API and CORS, through the app -------------------------------------------------------


@pytest.fixture
async def admin_api(tmp_path: Path) -> AsyncIterator[tuple[httpx.AsyncClient, str, str]]:
    """The app with keys on; (client, an admin key, a generate+read key)."""
    from sdgate.server.app import create_app
    from tests.fakes import FakeEngine

    settings = Settings(data_dir=tmp_path / "data", device="cpu", auth="keys", engine="null",
                        cors_allow_origins=["https://app.example"])
    engine = create_db_engine(settings.database_url)
    ensure_schema(engine)
    store = KeyStore(engine)
    admin, user = store.create("root", scopes=["admin"]).secret, store.create("user").secret
    engine.dispose()
    app = create_app(settings, engine=FakeEngine())
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            yield client, admin, user


async def test_the_admin_api(admin_api: tuple[httpx.AsyncClient, str, str]) -> None:
    client, admin, user = admin_api
    as_admin = {"Authorization": f"Bearer {admin}"}
    made = await client.post("/api/v1/keys", headers=as_admin, json={
        "name": "app1", "scopes": ["generate"], "rate": "2/s", "images_per_day": 10, "expires": "30d"})
    assert made.status_code == 201, made.text
    record = made.json()
    secret = record["key"]
    limits = {k: v for k, v in record["limits"].items() if v is not None}
    assert limits == {"rate_per_min": 120, "images_per_day": 10} and record["state"] == "active"
    assert "secret_hash" not in record and record["prefix"] == secret[:PREFIX_LENGTH]
    listed = (await client.get("/api/v1/keys", headers=as_admin)).json()
    assert {k["name"] for k in listed} == {"root", "user", "app1"}
    assert secret not in str(listed) and all("key" not in k and "secret_hash" not in k for k in listed)
    one = await client.get(f"/api/v1/keys/{record['id']}", headers=as_admin)
    assert one.json()["id"] == record["id"] and "key" not in one.json()

    as_app = {"Authorization": f"Bearer {secret}"}
    assert (await client.post("/api/v1/jobs", headers=as_app, content=b"{")).status_code != 401
    rotated = (await client.post(f"/api/v1/keys/{record['id']}/rotate", headers=as_admin)).json()
    assert rotated["id"] == record["id"] and rotated["key"] != secret
    assert (await client.post("/api/v1/jobs", headers=as_app, content=b"{")).status_code == 401
    as_app = {"Authorization": f"Bearer {rotated['key']}"}
    revoked = await client.delete(f"/api/v1/keys/{record['id']}", headers=as_admin)
    assert revoked.status_code == 200 and revoked.json()["state"] == "revoked"
    refused = await client.post("/api/v1/jobs", headers=as_app, content=b"{")  # this node: at once
    assert refused.status_code == 401 and "revoked" in refused.json()["error"]["message"]

    assert (await client.get("/api/v1/keys/key_nobody", headers=as_admin)).status_code == 404
    bad = await client.post("/api/v1/keys", headers=as_admin, json={"name": "x", "scopes": ["root"]})
    assert bad.status_code == 400 and bad.json()["error"]["field"] == "scopes"
    taken = await client.post("/api/v1/keys", headers=as_admin, json={"name": "user"})
    assert taken.status_code == 409
    forbidden = await client.get("/api/v1/keys", headers={"Authorization": f"Bearer {user}"})
    assert forbidden.status_code == 403 and forbidden.json()["error"]["code"] == "forbidden"


async def test_cors_only_for_the_configured_origin(admin_api: tuple[httpx.AsyncClient, str, str]) -> None:
    client, _, user = admin_api
    preflight = await client.options("/api/v1/jobs", headers={
        "Origin": "https://app.example", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization"})
    assert preflight.status_code == 200  # a preflight carries no credentials
    assert preflight.headers["access-control-allow-origin"] == "https://app.example"
    ok = await client.get("/api/v1/jobs", headers={"Origin": "https://app.example",
                                                   "Authorization": f"Bearer {user}"})
    assert ok.headers["access-control-allow-origin"] == "https://app.example"
    other = await client.get("/api/v1/jobs", headers={"Origin": "https://evil.example",
                                                      "Authorization": f"Bearer {user}"})
    assert "access-control-allow-origin" not in other.headers


async def test_cors_is_off_by_default(tmp_path: Path) -> None:
    from sdgate.server.app import create_app

    app = create_app(Settings(data_dir=tmp_path / "data", engine="null"), run_workers=False)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            r = await client.get("/api/v1/jobs", headers={"Origin": "https://app.example"})
            assert r.status_code == 200 and "access-control-allow-origin" not in r.headers


async def test_an_open_server_makes_no_key_over_http(tmp_path: Path) -> None:
    """Without credentials everyone is the anonymous admin; still, the first key is the operator's
    to make (``sdgate keys create``): anyone could otherwise lock everyone else out."""
    from sdgate.server.app import create_app

    app = create_app(Settings(data_dir=tmp_path / "data", engine="null"), run_workers=False)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            r = await client.post("/api/v1/keys", json={"name": "mine", "scopes": ["admin"]})
            assert r.status_code == 403 and "sdgate keys create" in r.json()["error"]["message"]
            assert (await client.get("/api/v1/keys")).status_code == 403
            assert (await client.get("/api/v1/jobs")).status_code == 200  # still open otherwise


async def test_a_worker_node_guards_its_metrics_with_keys(tmp_path: Path) -> None:
    from sdgate.server.app import create_worker_app
    from tests.fakes import FakeEngine, write_fake_checkpoint

    write_fake_checkpoint(tmp_path / "models" / "Stable-diffusion" / "alpha.safetensors")
    settings = Settings(data_dir=tmp_path / "data", models_dir=tmp_path / "models", device="cpu",
                        auth="keys", worker_poll_s=0.05)
    engine = create_db_engine(settings.database_url)
    ensure_schema(engine)
    secret = KeyStore(engine).create("prometheus", scopes=["read"]).secret
    engine.dispose()
    app = create_worker_app(settings, engine=FakeEngine())
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            assert (await client.get("/healthz")).status_code == 200
            assert (await client.get("/metrics")).status_code == 401
            ok = await client.get("/metrics", headers={"Authorization": f"Bearer {secret}"})
            assert ok.status_code == 200


async def test_a_revoked_keys_jobs_still_run(tmp_path: Path) -> None:
    """Nothing a key submitted before its revocation is lost: its running and queued jobs finish
    (an admin still sees them), while the key itself is refused at once."""
    from sdgate.server.app import create_app
    from tests.fakes import FakeEngine

    settings = Settings(data_dir=tmp_path / "data", device="cpu", auth="keys", worker_poll_s=0.02)
    engine = create_db_engine(settings.database_url)
    ensure_schema(engine)
    store = KeyStore(engine)
    admin = store.create("root", scopes=["admin"]).secret
    made = store.create("app", scopes=["generate", "read"])
    engine.dispose()
    app = create_app(settings, engine=FakeEngine(slow_step_s=0.05))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            as_app, as_admin = ({"Authorization": f"Bearer {k}"} for k in (made.secret, admin))
            body = {"prompt": "x", "steps": 10, "width": 64, "height": 64}
            ids = []
            for _ in range(2):  # one running, one queued behind it
                r = await client.post("/api/v1/jobs", headers=as_app, json=body)
                assert r.status_code == 202, r.text
                ids.append(r.json()["id"])
            assert (await client.delete(f"/api/v1/keys/{made.key.id}", headers=as_admin)).status_code == 200
            assert (await client.get(f"/api/v1/jobs/{ids[0]}", headers=as_app)).status_code == 401
            for job_id in ids:
                done = await client.get(f"/api/v1/jobs/{job_id}?wait=30", headers=as_admin)
                assert done.status_code == 200 and done.json()["state"] == "succeeded", done.text
