"""Per-principal limits through the server (issue 16): the request rate on every call, images and
GPU seconds per UTC day at submit; over a limit each dialect answers its own 429 with
``Retry-After``, and nothing is left behind. The principals come from a test authenticator that maps
a Bearer token to a principal with limits (API keys make the same principals); the quotas' clock is
a fake one. The limits across two API processes on one PostgreSQL: ``test_limits_cluster.py``.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from starlette.datastructures import Headers
from starlette.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from sdgate.core.errors import Unauthorized
from sdgate.jobs.quotas import Quotas
from sdgate.jobs.schema import daily_usage
from sdgate.server import app as app_module
from sdgate.server.auth import Authenticator, Limits, Principal
from sdgate.server.services import Services
from sdgate.settings import Settings
from tests.cluster_services import metric
from tests.fakes import FakeEngine
from tests.fakes import FakeWallClock as FakeClock

# 22:00 UTC: the day's quotas start over in two hours.
# Today (UTC) at 22:00: the fake clock stays near the wall clock, which the server's retention pass
# may read while a test runs (it prunes rate buckets idle for a week: one months away would be).
EVENING = datetime.now(UTC).replace(hour=22, minute=0, second=0, microsecond=0)
TODAY = EVENING.date().isoformat()
TOMORROW = (EVENING + timedelta(days=1)).date().isoformat()
UNTIL_MIDNIGHT = 2 * 3600
GENERATE = frozenset({"generate", "read"})


class TokenAuth(Authenticator):
    """``Authorization: Bearer <token>`` -> the principal the test gave that token."""

    challenge = "Bearer"

    def __init__(self, principals: dict[str, Principal]) -> None:
        self.principals = principals

    def authenticate(self, headers: Headers, query_token: str | None = None) -> Principal:
        scheme, _, token = (headers.get("authorization") or "").partition(" ")
        principal = self.principals.get(token) if scheme.lower() == "bearer" else None
        if principal is None:
            raise Unauthorized("no such key")
        return principal


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


PRINCIPALS = {
    "ann": Principal(id="key_ann", scopes=GENERATE, limits=Limits(rate_per_min=60, rate_burst=2), name="ann"),
    "bob": Principal(id="key_bob", scopes=GENERATE, limits=Limits(rate_per_min=60, rate_burst=2), name="bob"),
    "imgs": Principal(id="key_imgs", scopes=GENERATE, limits=Limits(images_per_day=3), name="imgs"),
    "gpu": Principal(id="key_gpu", scopes=GENERATE, limits=Limits(gpu_seconds_per_day=60), name="gpu"),
    "held": Principal(id="key_held", scopes=GENERATE, limits=Limits(images_per_day=3, max_queued_jobs=1)),
    "free": Principal(id="key_free", scopes=GENERATE, name="free"),
}


@asynccontextmanager
async def running(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[httpx.AsyncClient, Services, FakeClock]]:
    auth = TokenAuth(PRINCIPALS)
    monkeypatch.setattr(app_module, "authenticator_for", lambda *_args, **_kwargs: auth)
    app = app_module.create_app(settings, engine=FakeEngine(slow_step_s=0.02))
    clock = FakeClock(EVENING)
    async with app.router.lifespan_context(app):
        app.state.authenticator = auth  # where a started server keeps the one it runs with
        services: Services = app.state.services
        services.state.put(Quotas(services.database, clock=clock))
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t", timeout=30) as client:
            yield client, services, clock


def error_code(dialect: str) -> Callable[[dict[str, Any], str], bool]:
    """Whether a 429 body is ``dialect``'s shape for the error ``code`` (and says what it is)."""
    shapes: dict[str, Callable[[dict[str, Any], str], bool]] = {
        "native": lambda b, code: b["error"]["code"] == code,
        "a1111": lambda b, code: b["error"] in ("RateLimited", "QuotaExceeded") and "detail" in b,
        "openai": lambda b, code: b["error"]["type"] == "requests"
        and b["error"]["code"] == "rate_limit_exceeded",
        "stability": lambda b, code: b["name"] == "rate_limit_exceeded" and "message" in b,
        "hf": lambda b, code: isinstance(b["error"], str),
    }
    return shapes[dialect]


def message_of(body: dict[str, Any]) -> str:
    for key in ("message", "detail", "error"):
        value = body.get(key)
        if isinstance(value, str):
            return value
        if isinstance(value, dict) and isinstance(value.get("message"), str):
            return value["message"]
    raise AssertionError(body)


# Any call of each dialect counts towards the rate: a read route of each.
CALLS = [
    ("native", "GET", "/api/v1/jobs", None),
    ("a1111", "GET", "/sdapi/v1/options", None),
    ("openai", "GET", "/v1/models", None),
    ("stability", "GET", "/v1/engines/list", None),
    ("hf", "POST", "/models/alpha", {"inputs": "x", "parameters": {"width": 64, "height": 64,
                                                                     "num_inference_steps": 1}}),
]


@pytest.mark.parametrize(("dialect", "method", "path", "body"), CALLS, ids=[c[0] for c in CALLS])
async def test_over_the_rate_each_dialect_answers_its_429_until_a_token_is_back(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, dialect: str, method: str, path: str,
    body: dict[str, Any] | None,
) -> None:
    async with running(settings, monkeypatch) as (client, services, clock):
        for _ in range(2):  # the bucket holds two
            ok = await client.request(method, path, json=body, headers=bearer("ann"))
            assert ok.status_code == 200, ok.text
        refused = await client.request(method, path, json=body, headers=bearer("ann"))
        assert refused.status_code == 429, refused.text
        assert refused.headers["retry-after"] == "1"  # 60 a minute: one a second
        assert refused.headers.get("x-request-id")
        assert error_code(dialect)(refused.json(), "rate_limited"), refused.json()
        assert "60 requests per minute" in message_of(refused.json())
        # Bob has his own bucket; a key without a rate limit has none.
        assert (await client.request(method, path, json=body, headers=bearer("bob"))).status_code == 200
        for _ in range(5):
            assert (await client.request(method, path, json=body, headers=bearer("free"))).status_code == 200
        clock.advance(1.0)
        again = await client.request(method, path, json=body, headers=bearer("ann"))
        assert again.status_code == 200, again.text
        text = services.metrics.render().decode()
        assert metric(text, "sdgate_refusals_total", reason="rate_limited") == 1
        # The refusal is labelled with the route it was for, not as an unmatched path.
        assert metric(text, "sdgate_http_requests_total", status="429", dialect=dialect) == 1


async def test_a_refused_call_is_refused_before_it_is_read(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with running(settings, monkeypatch) as (client, services, _):
        for _ in range(2):
            await client.get("/api/v1/jobs", headers=bearer("ann"))
        r = await client.post("/api/v1/jobs", json={"prompt": "x", "steps": 1}, headers=bearer("ann"))
        assert r.status_code == 429 and r.json()["error"]["code"] == "rate_limited"
        assert services.store.list() == []
        # A path no route owns still counts, and answers the native body.
        r = await client.get("/nowhere", headers=bearer("ann"))
        assert r.status_code == 429 and r.json()["error"]["code"] == "rate_limited"
        # A wrong key is a 401, not a 429: the rate is a key's.
        assert (await client.get("/api/v1/jobs", headers=bearer("nobody"))).status_code == 401


# Each dialect's generation route, a body making ``n`` images.
GENERATIONS: list[tuple[str, str, Callable[[int], dict[str, Any]]]] = [
    ("native", "/api/v1/jobs", lambda n: {"prompt": "x", "steps": 1, "width": 64, "height": 64,
                                          "batch_size": n}),
    ("a1111", "/sdapi/v1/txt2img", lambda n: {"prompt": "x", "steps": 1, "width": 64, "height": 64,
                                               "batch_size": n}),
    ("openai", "/v1/images/generations", lambda n: {"prompt": "x", "size": "256x256", "n": n}),
    ("stability", "/v1/generation/alpha/text-to-image",
     lambda n: {"text_prompts": [{"text": "x"}], "width": 512, "height": 512, "steps": 10, "samples": n}),
    ("hf", "/models/alpha", lambda n: {"inputs": "x", "parameters": {"width": 64, "height": 64,
                                                                     "num_inference_steps": 1,
                                                                     "num_images_per_prompt": n}}),
]


@pytest.mark.parametrize(("dialect", "path", "body"), GENERATIONS, ids=[g[0] for g in GENERATIONS])
async def test_images_per_day_in_each_dialect(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, dialect: str, path: str,
    body: Callable[[int], dict[str, Any]],
) -> None:
    n = 1 if dialect == "hf" else 2  # HF's clients ask for one image a call
    async with running(settings, monkeypatch) as (client, services, clock):
        first = await client.post(path, json=body(n), headers=bearer("imgs"))
        assert first.status_code in (200, 202), first.text
        if dialect == "hf":
            for _ in range(2):
                assert (await client.post(path, json=body(1), headers=bearer("imgs"))).status_code == 200
            n = 3
        jobs_before = len(services.store.list())

        refused = await client.post(path, json=body(2 if dialect != "hf" else 1), headers=bearer("imgs"))

        assert refused.status_code == 429, refused.text
        assert error_code(dialect)(refused.json(), "quota_exceeded"), refused.json()
        assert int(refused.headers["retry-after"]) == UNTIL_MIDNIGHT
        message = message_of(refused.json())
        assert "images per day" in message and f"{n} of 3" in message, message
        assert len(services.store.list()) == jobs_before  # nothing left behind
        text = services.metrics.render().decode()
        assert metric(text, "sdgate_refusals_total", reason="quota_exceeded") == 1
        assert metric(text, "sdgate_refusals_total", reason="rate_limited") == 0
        # A new UTC day starts over.
        clock.advance(UNTIL_MIDNIGHT)
        again = await client.post(path, json=body(1), headers=bearer("imgs"))
        assert again.status_code in (200, 202), again.text


async def test_what_is_left_of_the_day_is_still_allowed(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with running(settings, monkeypatch) as (client, services, _):
        small = {"prompt": "x", "steps": 1, "width": 64, "height": 64}
        assert (await client.post("/api/v1/jobs", json={**small, "batch_size": 2},
                                  headers=bearer("imgs"))).status_code == 202
        r = await client.post("/api/v1/jobs", json={**small, "batch_size": 2}, headers=bearer("imgs"))
        assert r.status_code == 429
        assert (await client.post("/api/v1/jobs", json=small, headers=bearer("imgs"))).status_code == 202
        r = await client.post("/api/v1/jobs", json=small, headers=bearer("imgs"))
        assert r.status_code == 429 and "3 of 3" in r.json()["error"]["message"]
        r = await client.post("/api/v1/jobs", json={**small, "batch_size": 4}, headers=bearer("free"))
        assert r.status_code == 202  # no limit: any batch
        r = await client.post("/api/v1/jobs", json={**small, "batch_size": 4}, headers=bearer("imgs"))
        assert r.status_code == 429 and "more than the limit of 3 a day" in r.json()["error"]["message"]
        # Another key's quota is its own.
        assert (await client.post("/api/v1/jobs", json=small, headers=bearer("free"))).status_code == 202


async def test_a_submit_refused_afterwards_gives_its_images_back(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    slow = {"prompt": "slow", "steps": 500, "width": 64, "height": 64}
    async with running(settings, monkeypatch) as (client, services, clock):
        held = await client.post("/api/v1/jobs", json=slow, headers=bearer("held"))
        assert held.status_code == 202
        for _ in range(3):  # over its one job at once: refused by the store, after the reservation
            r = await client.post("/api/v1/jobs", json=slow, headers=bearer("held"))
            assert r.status_code == 429 and r.json()["error"]["code"] == "too_many_jobs"
        quotas = services.state.get(Quotas)
        assert quotas.usage("key_held", TODAY).images == 1  # the three were given back
        text = services.metrics.render().decode()
        assert metric(text, "sdgate_refusals_total", reason="too_many_jobs") == 3
        assert (await client.post(f"/api/v1/jobs/{held.json()['id']}/cancel",
                                  headers=bearer("held"))).status_code in (200, 202)


async def test_images_a_job_did_not_make_are_given_back(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A job that fails on the worker, or is cancelled, does not spend the images it reserved: the
    day's quota is whole again for the next request. A succeeded job's images stay counted."""
    small = {"steps": 1, "width": 64, "height": 64}
    async with running(settings, monkeypatch) as (client, services, _):
        quotas = services.state.get(Quotas)

        async def ended(job: httpx.Response) -> dict[str, Any]:
            assert job.status_code == 202, job.text
            for _ in range(500):
                body = (await client.get(f"/api/v1/jobs/{job.json()['id']}", headers=bearer("imgs"))).json()
                if body["state"] in ("succeeded", "failed", "cancelled"):
                    return body
                await asyncio.sleep(0.02)
            raise AssertionError(body)

        async def post(prompt: str, images: int, **more: Any) -> httpx.Response:
            body = {**small, "prompt": prompt, "batch_size": images, **more}
            return await client.post("/api/v1/jobs", json=body, headers=bearer("imgs"))

        failed = await ended(await post("boom", 3))
        assert failed["state"] == "failed" and quotas.usage("key_imgs", TODAY).images == 0
        slow = await post("slow", 3, steps=500)
        cancel = await client.post(f"/api/v1/jobs/{slow.json()['id']}/cancel", headers=bearer("imgs"))
        assert cancel.status_code in (200, 202), cancel.text
        assert (await ended(slow))["state"] == "cancelled" and quotas.usage("key_imgs", TODAY).images == 0
        done = await ended(await post("x", 2))
        assert done["state"] == "succeeded" and quotas.usage("key_imgs", TODAY).images == 2
        r = await post("x", 2)
        assert r.status_code == 429 and "2 of 3" in r.json()["error"]["message"]


async def test_spent_gpu_seconds_refuse_until_the_next_day(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    small = {"prompt": "x", "steps": 1, "width": 64, "height": 64}
    async with running(settings, monkeypatch) as (client, services, clock):
        assert (await client.post("/api/v1/jobs", json=small, headers=bearer("gpu"))).status_code == 202
        with services.database.begin() as conn:  # what the worker records as the day's jobs finish
            conn.execute(sa.delete(daily_usage).where(daily_usage.c.principal == "key_gpu"))
            conn.execute(sa.insert(daily_usage).values(principal="key_gpu", day=TODAY, images=0,
                                                       gpu_seconds=60.5))
        r = await client.post("/sdapi/v1/txt2img", json=small, headers=bearer("gpu"))
        assert r.status_code == 429 and r.json()["error"] == "QuotaExceeded", r.text
        # 60.5 and whatever the jobs the test ran before took (charged to the same day)
        assert re.search(r"GPU seconds per day: 60\.5\d* of 60 used today", r.json()["detail"]), r.text
        assert int(r.headers["retry-after"]) == UNTIL_MIDNIGHT
        clock.advance(UNTIL_MIDNIGHT + 1)
        r = await client.post("/api/v1/jobs", json=small, headers=bearer("gpu"))
        assert r.status_code == 202, r.text


async def test_me_and_stabilitys_balance_report_what_is_left_today(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with running(settings, monkeypatch) as (client, services, clock):
        me = (await client.get("/api/v1/me", headers=bearer("imgs"))).json()
        assert me["id"] == "key_imgs" and me["name"] == "imgs" and me["scopes"] == ["generate", "read"]
        assert me["admin"] is False
        assert me["limits"] == {"max_queued_jobs": None, "rate_per_min": None, "rate_burst": None,
                                "images_per_day": 3, "gpu_seconds_per_day": None}
        assert me["usage"] == {"day": TODAY, "images": 0, "gpu_seconds": 0.0, "images_left": 3,
                               "gpu_seconds_left": None, "resets_at": f"{TOMORROW}T00:00:00Z"}
        assert (await client.get("/v1/user/balance", headers=bearer("imgs"))).json() == {"credits": 3.0}

        job = {"prompt": "x", "steps": 1, "width": 64, "height": 64, "batch_size": 2}
        assert (await client.post("/api/v1/jobs", json=job, headers=bearer("imgs"))).status_code == 202

        usage = (await client.get("/api/v1/me", headers=bearer("imgs"))).json()["usage"]
        assert (usage["images"], usage["images_left"]) == (2, 1)
        assert (await client.get("/v1/user/balance", headers=bearer("imgs"))).json() == {"credits": 1.0}
        account = (await client.get("/v1/user/account", headers=bearer("imgs"))).json()
        assert account["id"] == "user-key_imgs" and account["email"] == "imgs@sdgate.local"
        assert set(account) == {"id", "email", "profile_picture", "organizations"}  # Stability's fields
        # A key without a daily limit: a documented large balance, no limits.
        free = (await client.get("/v1/user/balance", headers=bearer("free"))).json()
        assert free == {"credits": 1_000_000.0}
        me = (await client.get("/api/v1/me", headers=bearer("free"))).json()
        assert set(me["limits"].values()) == {None} and me["usage"]["images_left"] is None
        # The next UTC day, everything is there again.
        clock.advance(UNTIL_MIDNIGHT)
        assert (await client.get("/v1/user/balance", headers=bearer("imgs"))).json() == {"credits": 3.0}
        gpu = (await client.get("/api/v1/me", headers=bearer("gpu"))).json()["usage"]
        assert gpu["gpu_seconds_left"] == 60.0 and gpu["day"] == TOMORROW


async def test_the_gpu_seconds_jobs_take_count_against_the_day(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """End to end on the wall clock: the worker charges a finished job's run time to its owner's day
    (``jobs/usage.py``), and the next submit is refused once the day's seconds are spent."""
    tight = Principal(id="key_tight", scopes=GENERATE, limits=Limits(gpu_seconds_per_day=0.05))
    monkeypatch.setitem(PRINCIPALS, "tight", tight)
    run = {"prompt": "slow", "steps": 5, "width": 64, "height": 64}  # 5 x 0.02 s: more than 0.05 s
    async with running(settings, monkeypatch) as (client, services, _):
        services.state.put(Quotas(services.database))  # the worker's clock: the wall's
        r = await client.post("/sdapi/v1/txt2img", json=run, headers=bearer("tight"))  # waits for the job
        assert r.status_code == 200, r.text
        me = (await client.get("/api/v1/me", headers=bearer("tight"))).json()
        assert me["usage"]["gpu_seconds"] >= 0.05 and me["usage"]["gpu_seconds_left"] == 0.0, me
        refused = await client.post("/api/v1/jobs", json=run, headers=bearer("tight"))
        assert refused.status_code == 429 and refused.json()["error"]["code"] == "quota_exceeded"
        assert "GPU seconds per day" in refused.json()["error"]["message"]


def test_a_websocket_over_the_rate_is_closed_try_again_later(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    auth = TokenAuth(PRINCIPALS)
    monkeypatch.setattr(app_module, "authenticator_for", lambda *_args, **_kwargs: auth)
    app = app_module.create_app(settings, engine=FakeEngine())
    with TestClient(app) as client:
        app.state.authenticator = auth
        services: Services = app.state.services
        services.state.put(Quotas(services.database, clock=FakeClock(EVENING)))
        for _ in range(2):
            with client.websocket_connect("/api/v1/events", headers=bearer("ann")):
                pass
        with pytest.raises(WebSocketDisconnect) as closed, \
                client.websocket_connect("/api/v1/events", headers=bearer("ann")):
            pass
        assert closed.value.code == 1013
        assert "60 requests per minute" in closed.value.reason
        with client.websocket_connect("/api/v1/events", headers=bearer("bob")):
            pass
