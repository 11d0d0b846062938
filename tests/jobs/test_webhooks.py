"""Webhooks: signing, URL rules, backoff, and delivery to a loopback receiver that fails first."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from sdgate.core.errors import InvalidRequest
from sdgate.jobs.webhooks import (
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    backoff_s,
    check_callback_url,
    load_secret,
    sign,
    verify,
)
from sdgate.settings import Settings
from tests.fakes import FakeEngine, write_fake_checkpoint
from tests.harness import ThreadServer
from tests.server.dialects.native.conftest import serve


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    write_fake_checkpoint(tmp_path / "models" / "Stable-diffusion" / "alpha.safetensors")
    return Settings(data_dir=tmp_path / "data", models_dir=tmp_path / "models", device="cpu",
                    worker_poll_s=0.05)


def test_signature_round_trip_and_tampering() -> None:
    now = int(time.time())
    body = b'{"event":"job.succeeded"}'
    headers = {TIMESTAMP_HEADER: str(now), SIGNATURE_HEADER: sign("s3cret", now, body)}
    assert headers[SIGNATURE_HEADER].startswith("sha256=")
    assert verify("s3cret", body, headers)
    assert not verify("other", body, headers)
    assert not verify("s3cret", body + b" ", headers)
    stale = {TIMESTAMP_HEADER: str(now - 3600), SIGNATURE_HEADER: sign("s3cret", now - 3600, body)}
    assert not verify("s3cret", body, stale)
    assert not verify("s3cret", body, {})


def test_backoff_doubles_and_is_capped() -> None:
    assert [backoff_s(n, 2.0) for n in (1, 2, 3)] == [2.0, 4.0, 8.0]
    assert backoff_s(40, 2.0) == 3600.0


@pytest.mark.parametrize(
    "url",
    ["http://127.0.0.1/x", "http://localhost:8080/", "http://10.1.2.3/", "http://[::1]/", "http://169.254.169.254/",
     "http://192.168.0.1/", "http://[::ffff:127.0.0.1]/", "ftp://8.8.8.8/", "http://user:pw@8.8.8.8/",
     "/relative"],
)
def test_private_and_odd_urls_are_refused(url: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        check_callback_url(url, allow_private=False)
    assert info.value.field == "callback_url"


def test_public_and_allowed_private_urls_pass() -> None:
    assert check_callback_url("https://8.8.8.8/hook", allow_private=False)
    assert check_callback_url("http://127.0.0.1:9/hook", allow_private=True)


def test_the_secret_is_made_once_and_kept(tmp_path: Path) -> None:
    first = load_secret(None, tmp_path)
    assert first == load_secret(None, tmp_path) and len(first) == 64
    assert load_secret("given", tmp_path) == "given"


class Receiver:
    """A loopback webhook receiver that answers 500 to the first ``fail`` calls."""

    def __init__(self, fail: int) -> None:
        self.fail = fail
        self.calls: list[tuple[bytes, dict[str, str]]] = []

        async def hook(request: Request) -> Response:
            self.calls.append((await request.body(), dict(request.headers)))
            return Response(status_code=500 if len(self.calls) <= self.fail else 204)

        self.app = Starlette(routes=[Route("/hook", hook, methods=["POST"])])


async def _wait(predicate: Any, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        await asyncio.sleep(0.02)


async def test_delivery_is_signed_retried_and_recorded(settings: Settings) -> None:
    receiver = Receiver(fail=1)
    overrides = {"webhook_secret": "topsecret", "allow_private_callbacks": True, "webhook_backoff_s": 0.05}
    with ThreadServer(receiver.app) as hook_server:
        async with serve(settings, FakeEngine(), **overrides) as api:
            body = {"prompt": "x", "steps": 1, "callback_url": f"{hook_server.url}/hook"}
            job = (await api.post("/api/v1/jobs", json=body)).json()
            await _wait(lambda: len(receiver.calls) >= 2)
            for _ in range(50):
                shown = (await api.get(f"/api/v1/jobs/{job['id']}")).json()
                if shown["webhook"]["state"] == "delivered":
                    break
                await asyncio.sleep(0.05)
            metrics = (await api.get("/metrics")).text
    assert 'sdgate_webhook_deliveries_total{outcome="retry"} 1.0' in metrics
    assert 'sdgate_webhook_deliveries_total{outcome="delivered"} 1.0' in metrics
    assert shown["webhook"]["state"] == "delivered" and shown["webhook"]["attempts"] == 2
    assert shown["webhook"]["last_status"] == 204
    assert [a["status"] for a in shown["webhook"]["log"]] == [500, 204]
    for raw, headers in receiver.calls:
        normalized = {k.title(): v for k, v in headers.items()}
        assert verify("topsecret", raw, normalized)
        assert headers["x-sdgate-event"] == "job.succeeded"
    payload = json.loads(receiver.calls[-1][0])
    assert payload["event"] == "job.succeeded" and payload["job"]["id"] == job["id"]
    assert len(receiver.calls) == 2


async def test_loopback_callbacks_are_refused_by_default(settings: Settings) -> None:
    async with serve(settings, FakeEngine()) as api:
        r = await api.post("/api/v1/jobs", json={"prompt": "x", "callback_url": "http://127.0.0.1:1/hook"})
    assert r.status_code == 400 and r.json()["error"]["field"] == "callback_url"


def test_two_processes_never_claim_the_same_delivery(store) -> None:  # noqa: ANN001 - jobs conftest
    from sdgate.core.jobs import ControlAction
    from sdgate.core.requests import GenerationRequest
    from sdgate.jobs.webhooks import Webhooks

    one, two = (Webhooks(store.database, secret="s", render=lambda job: {}) for _ in range(2))
    job = store.submit(GenerationRequest(prompt="x"))
    one.register(job.id, "http://127.0.0.1/hook")
    assert one._due() == [] and two._due() == []  # not terminal yet: nothing is due
    store.request_control(job.id, ControlAction.CANCEL)
    assert one._due() == [(job.id, "http://127.0.0.1/hook", 0)]
    assert two._due() == []  # leased by the first
