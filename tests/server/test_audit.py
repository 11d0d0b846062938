"""The audit log through the server (issue 16): one record per call of every dialect, with the
caller's key id, the route's template, the status, the job, its images and GPU seconds; refusals
recorded; never a secret; prompts only when turned on; ``GET /api/v1/audit`` for admins only.

The principals come from a test authenticator mapping a Bearer token to a principal with a key id
(API keys make the same principals); Basic users come from ``--api-auth`` itself.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from fastapi import FastAPI
from starlette.datastructures import Headers
from starlette.testclient import TestClient

from sdgate.core.engine import EngineOutput
from sdgate.core.errors import Unauthorized
from sdgate.jobs.audit import AuditFilter, AuditRecord
from sdgate.jobs.database import create_db_engine, ensure_schema, transaction
from sdgate.jobs.keys import KeyStore
from sdgate.jobs.schema import audit_log
from sdgate.server import app as app_module
from sdgate.server.auth import Authenticator, Limits, Principal
from sdgate.server.runtime import ServerRuntime
from sdgate.settings import Settings
from tests.fakes import FakeEngine

GENERATE = frozenset({"generate", "read"})
ADMIN = frozenset({"generate", "read", "admin"})
ANN_TOKEN = "sk-ann-SECRETann0000"
ROOT_TOKEN = "sk-root-SECRETroot000"
TIGHT_TOKEN = "sk-tight-SECRETtight0"


def key_principal(key_id: str, scopes: frozenset[str], **limits: Any) -> Principal:
    return Principal(id=key_id, scopes=scopes, limits=Limits(**limits), key_id=key_id,
                     key_prefix=key_id[:8], name=key_id.removeprefix("key_"))


PRINCIPALS = {
    ANN_TOKEN: key_principal("key_ann", GENERATE),
    ROOT_TOKEN: key_principal("key_root", ADMIN),
    TIGHT_TOKEN: key_principal("key_tight", GENERATE, max_queued_jobs=1),
}


class TokenAuth(Authenticator):
    """``Authorization: Bearer <token>`` -> the principal the test gave that token."""

    challenge = "Bearer"

    def authenticate(self, headers: Headers, query_token: str | None = None) -> Principal:
        scheme, _, token = (headers.get("authorization") or "").partition(" ")
        principal = PRINCIPALS.get(token) if scheme.lower() == "bearer" else None
        if principal is None:
            raise Unauthorized("no such key")
        return principal


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


class FlaggingEngine(FakeEngine):
    """Every image it makes is one the safety checker replaced."""

    def generate(self, request: Any, inputs: Any, control: Any) -> EngineOutput:
        out = super().generate(request, inputs, control)
        for image in out.images:
            image.filtered = True
        return out


@asynccontextmanager
async def running(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, *, tokens: bool = True,
    engine: FakeEngine | None = None,
) -> AsyncIterator[tuple[httpx.AsyncClient, FastAPI]]:
    """The app over the fake engine (each step 10 ms, so a job takes measurable GPU time); with
    ``tokens`` callers are the Bearer tokens above, else ``settings`` decide (``--api-auth``,
    ``--auth keys``)."""
    auth = TokenAuth()
    if tokens:
        monkeypatch.setattr(app_module, "authenticator_for", lambda *_args, **_kwargs: auth)
    app = app_module.create_app(settings, engine=engine or FakeEngine(step_s=0.01, slow_step_s=0.2))
    async with app.router.lifespan_context(app):
        if tokens:
            app.state.authenticator = auth  # where a started server keeps the one it runs with
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t", timeout=30) as client:
            yield client, app


def runtime_of(app: FastAPI) -> ServerRuntime:
    return app.state.services.state.get(ServerRuntime)


async def records(app: FastAPI, flt: AuditFilter | None = None) -> list[AuditRecord]:
    """Every record so far, newest first (after the writer wrote what is queued)."""
    audit = runtime_of(app).audit
    assert await asyncio.to_thread(audit.flush)
    return (await asyncio.to_thread(audit.query, flt or AuditFilter(), limit=1000)).records


def raw_rows(app: FastAPI) -> list[dict[str, Any]]:
    with transaction(app.state.services.database, write=False) as conn:
        return [dict(row) for row in conn.execute(sa.select(audit_log).order_by(audit_log.c.seq)).mappings()]


# Each dialect's generation route (template), a body asking for two images, and the images it makes
# (Hugging Face's answer is one image: it makes one).
GENERATIONS: list[tuple[str, str, str, dict[str, Any], int]] = [
    ("a1111", "/sdapi/v1/txt2img", "/sdapi/v1/txt2img",
     {"prompt": "a red fox", "steps": 2, "width": 64, "height": 64, "batch_size": 2}, 2),
    ("openai", "/v1/images/generations", "/v1/images/generations",
     {"prompt": "a red fox", "size": "256x256", "n": 2}, 2),
    ("stability", "/v1/generation/alpha/text-to-image", "/v1/generation/{engine_id}/text-to-image",
     {"text_prompts": [{"text": "a red fox"}], "width": 512, "height": 512, "steps": 10, "samples": 2}, 2),
    ("hf", "/models/alpha", "/models/{model_id}",
     {"inputs": "a red fox", "parameters": {"width": 64, "height": 64, "num_inference_steps": 2,
                                            "num_images_per_prompt": 2}}, 1),
]


@pytest.mark.parametrize(("dialect", "path", "template", "body", "images"), GENERATIONS,
                         ids=[g[0] for g in GENERATIONS])
async def test_a_generation_is_recorded_with_its_job_images_and_gpu_seconds(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, dialect: str, path: str, template: str,
    body: dict[str, Any], images: int,
) -> None:
    async with running(settings, monkeypatch) as (client, app):
        r = await client.post(path, json=body, headers=bearer(ANN_TOKEN))
        assert r.status_code == 200, r.text
        (record,) = await records(app)
        got = (record.key_id, record.principal, record.dialect, record.method, record.route, record.status)
        assert got == ("key_ann", "key_ann", dialect, "POST", template, 200)
        assert record.request_id == r.headers["x-request-id"]
        assert record.images == images and record.filtered is False and record.prompt is None
        job = await asyncio.to_thread(app.state.services.store.get, record.job_id)
        assert job.owner == "key_ann" and job.dialect == dialect
        assert job.started_at is not None and job.finished_at is not None
        expected = (job.finished_at - job.started_at).total_seconds()
        assert record.gpu_seconds == pytest.approx(expected) and record.gpu_seconds >= 0.01
        assert datetime.now(UTC) - timedelta(minutes=1) < record.at <= datetime.now(UTC)


async def test_native_calls_are_recorded_by_their_route_template(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with running(settings, monkeypatch) as (client, app):
        r = await client.post("/api/v1/jobs", json={"prompt": "x", "steps": 1, "width": 64, "height": 64,
                                                     "batch_size": 3}, headers=bearer(ANN_TOKEN))
        assert r.status_code == 202, r.text
        job_id = r.json()["id"]
        assert (await client.get(f"/api/v1/jobs/{job_id}", headers=bearer(ANN_TOKEN))).status_code == 200
        look, submit = await records(app)
        assert (submit.route, submit.status, submit.job_id, submit.images, submit.dialect) == (
            "/api/v1/jobs", 202, job_id, 3, "native")
        assert submit.gpu_seconds is None  # it did not wait for the job
        assert (look.route, look.method, look.status) == ("/api/v1/jobs/{job_id}", "GET", 200)
        assert look.job_id is None


async def test_a_native_long_poll_records_the_gpu_seconds_of_the_job_it_waited_for(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with running(settings, monkeypatch) as (client, app):
        r = await client.post("/api/v1/jobs?wait=30", json={"prompt": "x", "steps": 2, "width": 64,
                                                             "height": 64}, headers=bearer(ANN_TOKEN))
        assert r.json()["state"] == "succeeded", r.text
        (record,) = await records(app)
        job = await asyncio.to_thread(app.state.services.store.get, record.job_id)
        assert job.started_at is not None and job.finished_at is not None
        expected = (job.finished_at - job.started_at).total_seconds()
        assert record.gpu_seconds == pytest.approx(expected) and record.gpu_seconds > 0


async def test_prompts_are_recorded_only_when_turned_on(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    body = {"prompt": "a red fox", "steps": 1, "width": 64, "height": 64}
    for audit_prompts, expected in ((False, None), (True, "a red fox")):
        configured = settings.model_copy(update={"audit_prompts": audit_prompts,
                                                 "data_dir": settings.data_dir / str(audit_prompts)})
        async with running(configured, monkeypatch) as (client, app):
            r = await client.post("/sdapi/v1/txt2img", json=body, headers=bearer(ANN_TOKEN))
            assert r.status_code == 200, r.text
            (record,) = await records(app, AuditFilter(route="/sdapi/v1/txt2img"))
            assert record.prompt == expected


async def test_refusals_are_recorded(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    small = {"prompt": "x", "steps": 1, "width": 64, "height": 64}
    async with running(settings, monkeypatch) as (client, app):
        assert (await client.post("/sdapi/v1/txt2img", json=small)).status_code == 401
        assert (await client.get("/v1/models", headers=bearer("sk-wrong"))).status_code == 401
        assert (await client.get("/api/v1/audit", headers=bearer(ANN_TOKEN))).status_code == 403
        slow = {**small, "prompt": "slow", "steps": 5}
        assert (await client.post("/api/v1/jobs", json=slow, headers=bearer(TIGHT_TOKEN))).status_code == 202
        assert (await client.post("/api/v1/jobs", json=slow, headers=bearer(TIGHT_TOKEN))).status_code == 429
        assert (await client.get("/no/such/route", headers=bearer(ANN_TOKEN))).status_code == 404
        assert (await client.get("/healthz")).status_code == 200  # not recorded
        recorded = list(reversed(await records(app)))
    assert [(r.dialect, r.method, r.route, r.status, r.job_id is not None) for r in recorded] == [
        ("a1111", "POST", "/sdapi/v1/txt2img", 401, False),
        ("openai", "GET", "/v1/models", 401, False),
        ("native", "GET", "/api/v1/audit", 403, False),
        ("native", "POST", "/api/v1/jobs", 202, True),
        ("native", "POST", "/api/v1/jobs", 429, False),
        (None, "GET", "<unmatched>", 404, False),
    ]
    # An authentication refusal has no principal; a scope refusal (403) names the key refused
    assert [r.key_id for r in recorded[:2]] == [None, None]
    assert [r.key_id for r in recorded[2:]] == ["key_ann", "key_tight", "key_tight", "key_ann"]


def _no_secret_in(rows: list[dict[str, Any]], secrets: list[str]) -> None:
    assert rows
    for row in rows:
        for column, value in row.items():
            for secret in secrets:
                assert secret not in str(value), f"{secret!r} in audit_log.{column}: {value!r}"


async def test_no_key_password_or_query_token_is_stored(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    small = {"prompt": "x", "steps": 1, "width": 64, "height": 64}
    async with running(settings, monkeypatch) as (client, app):
        r = await client.post("/sdapi/v1/txt2img?token=tok-SECRETquery", json=small,
                              headers=bearer(ANN_TOKEN))
        assert r.status_code == 200, r.text
        await client.get("/api/v1/jobs/job-SECRETpath?token=tok-SECRETquery", headers=bearer(ANN_TOKEN))
        await client.get("/v1/models?token=tok-SECRETquery", headers=bearer("sk-SECRETwrong"))
        await records(app)
        rows = raw_rows(app)
    assert len(rows) == 3 and rows[1]["route"] == "/api/v1/jobs/{job_id}"
    _no_secret_in(rows, ["SECRET", ANN_TOKEN])

    password = "pw-SECRETbasic"
    basic = settings.model_copy(update={"api_auth": f"alice:{password}", "data_dir": settings.data_dir / "b"})
    auth = "Basic " + base64.b64encode(f"alice:{password}".encode()).decode()
    wrong = "Basic " + base64.b64encode(b"alice:pw-SECRETwrong").decode()
    async with running(basic, monkeypatch, tokens=False) as (client, app):
        r = await client.post("/sdapi/v1/txt2img?token=tok-SECRETquery", json=small,
                              headers={"Authorization": auth})
        assert r.status_code == 200, r.text
        assert (await client.get("/sdapi/v1/options", headers={"Authorization": wrong})).status_code == 401
        records_ = await records(app)
        rows = raw_rows(app)
    assert [(r.principal, r.key_id, r.status) for r in records_] == [(None, None, 401), ("alice", None, 200)]
    _no_secret_in(rows, ["SECRET", base64.b64encode(password.encode()).decode()[:12]])


async def test_real_api_keys_are_recorded_by_id_never_by_secret(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Keys from the key store, sent as a Bearer header and as ``?token=``: the records name the
    key's id; neither key, nor its digest, is in any column. The admin API resolves a key's name."""
    configured = settings.model_copy(update={"auth": "keys"})
    engine = create_db_engine(configured.database_url)
    try:
        ensure_schema(engine)
        store = KeyStore(engine)
        app1 = store.create("app1", scopes=("generate", "read"))
        admin = store.create("ops", scopes=("admin", "read", "generate"))
    finally:
        engine.dispose()
    small = {"prompt": "x", "steps": 1, "width": 64, "height": 64}
    async with running(configured, monkeypatch, tokens=False) as (client, app):
        r = await client.post("/sdapi/v1/txt2img", json=small, headers=bearer(app1.secret))
        assert r.status_code == 200, r.text
        assert (await client.get(f"/v1/models?token={app1.secret}")).status_code == 200
        assert (await client.get("/v1/models", headers=bearer(app1.secret[:-2] + "xx"))).status_code == 401
        r = await client.get("/api/v1/audit", params={"key": "app1"}, headers=bearer(admin.secret))
        assert r.status_code == 200, r.text
        listed = r.json()["records"]
        await records(app)
        rows = raw_rows(app)
    assert [(x["key_id"], x["route"], x["status"]) for x in listed] == [
        (app1.key.id, "/v1/models", 200), (app1.key.id, "/sdapi/v1/txt2img", 200)]
    assert listed[1]["job_id"] is not None and listed[1]["images"] == 1
    assert [(row["key_id"], row["status"]) for row in rows][-2:] == [(None, 401), (admin.key.id, 200)]
    _no_secret_in(rows, [app1.secret, admin.secret, app1.secret[:-2] + "xx",
                         app1.secret[len(app1.key.prefix):]])


async def test_content_filtered_requests_and_images_are_marked(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    blocklist = tmp_path / "blocked.txt"
    blocklist.write_text("forbidden thing\n", encoding="utf-8")
    configured = settings.model_copy(update={"content_blocklist": blocklist})
    small = {"steps": 1, "width": 64, "height": 64}
    async with running(configured, monkeypatch, engine=FlaggingEngine(step_s=0.01)) as (client, app):
        refused = await client.post("/sdapi/v1/txt2img", json={**small, "prompt": "a forbidden thing"},
                                    headers=bearer(ANN_TOKEN))
        assert refused.status_code == 400, refused.text
        r = await client.post("/v1/images/generations", json={"prompt": "a cat", "size": "256x256"},
                              headers=bearer(ANN_TOKEN))
        assert r.status_code in (200, 400), r.text  # OpenAI refuses what its checker flagged
        image, request = await records(app)
    assert (request.route, request.status, request.filtered, request.job_id) == (
        "/sdapi/v1/txt2img", 400, True, None)
    assert image.filtered is True and image.job_id is not None and image.gpu_seconds is not None


async def test_admin_api_filters_and_pages(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    async with running(settings, monkeypatch) as (client, app):
        for _ in range(3):
            assert (await client.get("/v1/models", headers=bearer(ANN_TOKEN))).status_code == 200
        assert (await client.get("/sdapi/v1/options", headers=bearer(ROOT_TOKEN))).status_code == 200
        assert (await client.get("/v1/models", headers=bearer("sk-wrong"))).status_code == 401
        root = bearer(ROOT_TOKEN)

        async def audit(**params: Any) -> dict[str, Any]:
            r = await client.get("/api/v1/audit", params=params, headers=root)
            assert r.status_code == 200, r.text
            return r.json()

        mine = await audit(key="key_ann")
        assert [(x["key_id"], x["route"], x["dialect"], x["status"]) for x in mine["records"]] == [
            ("key_ann", "/v1/models", "openai", 200)] * 3
        assert mine["next_cursor"] is None
        assert len((await audit(key="ann"))["records"]) == 0  # a name resolves through the key store only
        assert [x["status"] for x in (await audit(status=401))["records"]] == [401]
        assert [x["key_id"] for x in (await audit(route="/sdapi/v1/options"))["records"]] == ["key_root"]
        assert len((await audit(since="1h", route="/v1/models"))["records"]) == 4
        assert (await audit(until="2000-01-01"))["records"] == []
        first = await audit(limit=3, route="/v1/models")
        assert len(first["records"]) == 3 and first["next_cursor"] is not None
        rest = await audit(limit=3, route="/v1/models", cursor=first["next_cursor"])
        assert rest["next_cursor"] is None
        seqs = [x["seq"] for x in first["records"] + rest["records"]]
        assert seqs == sorted(seqs, reverse=True) and len(seqs) == 4
        # The admin's own queries are calls too.
        assert {x["route"] for x in (await audit(key="key_root"))["records"]} == {"/sdapi/v1/options",
                                                                                  "/api/v1/audit"}

        bad = await client.get("/api/v1/audit", params={"since": "yesterday"}, headers=root)
        assert bad.status_code == 422 and bad.json()["error"]["field"] == "since"
        refused = await client.get("/api/v1/audit", headers=bearer(ANN_TOKEN))
        assert refused.status_code == 403 and refused.json()["error"]["code"] == "forbidden"


async def test_queued_records_are_written_when_the_server_stops(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with running(settings, monkeypatch) as (client, _app):
        for _ in range(20):
            await client.get("/v1/models", headers=bearer(ANN_TOKEN))
    engine = create_db_engine(settings.database_url)
    try:
        with transaction(engine, write=False) as conn:
            assert conn.execute(sa.select(sa.func.count()).select_from(audit_log)).scalar_one() == 20
    finally:
        engine.dispose()


async def test_retention_deletes_old_records(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    configured = settings.model_copy(update={"audit_retention_s": 3600.0})
    async with running(configured, monkeypatch) as (client, app):
        await client.get("/v1/models", headers=bearer(ANN_TOKEN))
        await records(app)
        retention = runtime_of(app).retention
        assert (await asyncio.to_thread(retention.run_once))["audit"] == 0
        later = datetime.now(UTC) + timedelta(hours=2)
        assert (await asyncio.to_thread(retention.run_once, later))["audit"] == 1
        assert await records(app) == []


def test_websocket_sessions_are_recorded(settings: Settings) -> None:
    basic = settings.model_copy(update={"api_auth": "alice:pw"})
    auth = {"Authorization": "Basic " + base64.b64encode(b"alice:pw").decode()}
    app = app_module.create_app(basic, engine=FakeEngine())
    with TestClient(app) as client:
        with client.websocket_connect("/api/v1/events", headers=auth):
            pass
        with pytest.raises(Exception), client.websocket_connect("/api/v1/events"):  # noqa: B017, PT011
            pass
        audit = runtime_of(app).audit
        assert audit.flush()
        got = [(r.method, r.route, r.status, r.principal, r.dialect)
               for r in audit.query(AuditFilter()).records]
    assert got == [
        ("WEBSOCKET", "/api/v1/events", 401, None, "native"),
        ("WEBSOCKET", "/api/v1/events", 101, "alice", "native"),
    ]
