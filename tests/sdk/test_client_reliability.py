"""Retries, the idempotency key, timeouts, rate limits, the fallback chain and the cache, on
MockTransport. Sleeps are recorded, never slept."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from sdgate.client import (
    APIConnectionError,
    APITimeoutError,
    AsyncClient,
    BadRequestError,
    Client,
    ImageRequest,
    InternalServerError,
    NotFoundError,
    RateLimitError,
    TokenBucket,
)
from tests.sdk.fakes import AsyncSleeps, FakeClock, FakeNative, Sleeps


def scripted(*responses: httpx.Response | Exception, native: FakeNative | None = None):
    """A handler that answers POST /api/v1/jobs with ``responses`` in turn, then hands to ``native``."""
    native = native or FakeNative()
    queue = list(responses)
    seen: list[httpx.Request] = []

    def handle(request: httpx.Request) -> httpx.Response:
        if request.method == "POST" and request.url.path == "/api/v1/jobs":
            seen.append(request)
            if queue:
                item = queue.pop(0)
                if isinstance(item, Exception):
                    raise item
                return item
        return native.handle(request)

    return handle, seen


def make(handler, **options) -> tuple[Client, Sleeps]:
    client = Client("http://sdgate.test", transport=httpx.MockTransport(handler), **options)
    sleeps = Sleeps()
    client._sleep = sleeps
    return client, sleeps


def test_retries_5xx_with_one_idempotency_key() -> None:
    handler, seen = scripted(
        httpx.Response(503, json={"error": {"code": "unavailable", "message": "busy"}}),
        httpx.Response(502, text="bad gateway"),
    )
    client, sleeps = make(handler, max_retries=2)
    result = client.txt2img("a red circle", seed=5)
    assert result.seeds == [5] and result.job_id == "job_0001"
    keys = {r.headers["idempotency-key"] for r in seen}
    assert len(seen) == 3 and len(keys) == 1 and len(next(iter(keys))) == 32
    assert len(sleeps) == 2 and sleeps[1] > sleeps[0] * 1.1  # exponential


def test_each_logical_submission_gets_a_new_key() -> None:
    handler, seen = scripted()
    client, _ = make(handler)
    client.jobs.submit("one")
    client.jobs.submit("two")
    assert seen[0].headers["idempotency-key"] != seen[1].headers["idempotency-key"]


def test_duplicate_submission_with_the_same_key_is_one_job() -> None:
    """The reason for the key: a retried POST whose first answer was lost makes no second job."""
    native = FakeNative()
    lost = {"done": False}

    def handle(request: httpx.Request) -> httpx.Response:
        response = native.handle(request)
        if request.method == "POST" and not lost["done"]:
            lost["done"] = True  # the job was made, but the answer never arrived
            raise httpx.ReadError("connection reset")
        return response

    client, _ = make(handle)
    job = client.jobs.submit("once")
    assert list(native.jobs) == [job.id]


def test_retry_after_seconds_and_dates_are_obeyed() -> None:
    handler, _ = scripted(
        httpx.Response(429, headers={"Retry-After": "3"}),
        httpx.Response(503, headers={"Retry-After": "Thu, 01 Jan 1970 00:00:00 GMT"}),
    )
    client, sleeps = make(handler)
    client.jobs.submit("x")
    assert sleeps == [3.0, 0.0]


def test_gives_up_after_max_retries_with_the_last_error() -> None:
    handler, seen = scripted(*[httpx.Response(500, json={"error": {"code": "x", "message": "boom"}})] * 5)
    client, _ = make(handler, max_retries=2)
    with pytest.raises(InternalServerError, match="boom") as info:
        client.jobs.submit("x")
    assert info.value.status == 500 and len(seen) == 3


def test_4xx_is_not_retried() -> None:
    handler, seen = scripted(
        httpx.Response(400, json={"error": {"code": "invalid_request", "message": "no"}})
    )
    client, sleeps = make(handler)
    with pytest.raises(BadRequestError):
        client.jobs.submit("x")
    assert len(seen) == 1 and sleeps == []


def test_long_retry_after_is_not_waited_for() -> None:
    handler, seen = scripted(httpx.Response(429, headers={"Retry-After": "3600"}))
    client, sleeps = make(handler)
    with pytest.raises(RateLimitError):
        client.jobs.submit("x")
    assert sleeps == [] and len(seen) == 1


def test_connection_errors_are_retried_then_raised() -> None:
    handler, seen = scripted(*[httpx.ConnectError("refused")] * 3)
    client, sleeps = make(handler, max_retries=2)
    with pytest.raises(APIConnectionError, match="refused"):
        client.jobs.submit("x")
    assert len(seen) == 3 and len(sleeps) == 2


def test_timeouts_become_api_timeout_error() -> None:
    handler, _ = scripted(httpx.ReadTimeout("slow"))
    client, _ = make(handler, max_retries=0)
    with pytest.raises(APITimeoutError):
        client.jobs.submit("x")


def test_with_options_overrides_per_call_and_shares_the_pool() -> None:
    handler, seen = scripted(*[httpx.Response(503)] * 5)
    client, _ = make(handler, max_retries=3)
    quick = client.with_options(max_retries=0)
    assert quick._http is client._http and quick.backend is client.backend
    with pytest.raises(InternalServerError):
        quick.jobs.submit("x")
    assert len(seen) == 1
    with pytest.raises(TypeError, match="unknown option"):
        client.with_options(colour="red")


def test_timeouts_are_separate_for_connect_and_generation() -> None:
    captured: list[dict] = []

    def handle(request: httpx.Request) -> httpx.Response:
        captured.append(request.extensions["timeout"])
        return FakeNative().handle(request)

    client, _ = make(handle, timeout=321, connect_timeout=4)
    client.models.list()
    assert captured[0]["connect"] == 4 and captured[0]["read"] == 60


def test_rate_limit_applies_to_every_request() -> None:
    clock = FakeClock()
    bucket = TokenBucket(1.0, burst=1, clock=clock)
    native = FakeNative()
    client, sleeps = make(native.handle, rate_limit=bucket)
    client.models.list()
    client.models.list()
    client.models.list()
    assert sleeps == [pytest.approx(1.0), pytest.approx(2.0)]


def test_auth_headers_bearer_and_basic() -> None:
    native = FakeNative()
    Client("http://sdgate.test", api_key="sk-1", transport=native.transport).models.list()
    assert native.requests[-1].headers["authorization"] == "Bearer sk-1"
    Client("http://u:p@sdgate.test", transport=native.transport).models.list()
    assert native.requests[-1].headers["authorization"] == "Basic dTpw"
    assert native.requests[-1].url.host == "sdgate.test"


# -- fallback -----------------------------------------------------------------------------------------


def chain(primary, secondary=None):
    secondary = secondary or FakeNative()

    def route(request: httpx.Request) -> httpx.Response:
        if request.url.host == "primary.test":
            return primary(request)
        return secondary.handle(request)

    client = Client(
        backends=["http://primary.test", "http://secondary.test"],
        transport=httpx.MockTransport(route),
        max_retries=1,
    )
    client._sleep = Sleeps()
    return client, secondary


def test_fallback_moves_on_for_5xx() -> None:
    client, secondary = chain(lambda r: httpx.Response(503))
    result = client.txt2img("x", seed=1)
    assert result.job_id == "job_0001" and len(secondary.jobs) == 1


def test_fallback_moves_on_for_connection_errors() -> None:
    def down(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused")

    client, secondary = chain(down)
    assert client.txt2img("x").job_id == "job_0001"


@pytest.mark.parametrize("status", [400, 401, 404, 409, 422, 429])
def test_fallback_never_moves_on_for_4xx(status: int) -> None:
    client, secondary = chain(
        lambda r: httpx.Response(status, json={"error": {"code": "x", "message": "no"}})
    )
    with pytest.raises(Exception) as info:
        client.txt2img("x")
    assert getattr(info.value, "status", None) == status
    assert secondary.jobs == {}


def test_fallback_skips_backends_that_cannot_run_the_request() -> None:
    client = Client(
        backends=["http://primary.test", "hf+http://hf.test/models/x"],
        transport=httpx.MockTransport(lambda r: httpx.Response(503)),
        max_retries=0,
    )
    with pytest.raises(InternalServerError):
        client.img2img("x", init_image=b"\x89PNG...")


async def test_async_fallback_and_retries() -> None:
    native = FakeNative()
    calls = {"n": 0}

    def route(request: httpx.Request) -> httpx.Response:
        if request.url.host == "primary.test":
            calls["n"] += 1
            return httpx.Response(500)
        return native.handle(request)

    async with AsyncClient(
        backends=["http://primary.test", "http://secondary.test"],
        transport=httpx.MockTransport(route),
        max_retries=2,
    ) as client:
        sleeps = AsyncSleeps()
        client._sleep = sleeps
        result = await client.txt2img("x", seed=3)
    assert result.seeds == [3] and calls["n"] == 3 and len(sleeps) == 2


# -- cache --------------------------------------------------------------------------------------------


def test_cache_serves_fixed_seed_requests_from_disk(tmp_path: Path) -> None:
    native = FakeNative()
    client = Client("http://sdgate.test", transport=native.transport, cache=tmp_path / "cache")
    first = client.txt2img("a red circle", seed=9, n=2)
    again = client.txt2img("a red circle", seed=9, n=2)
    assert not first.cached and again.cached
    assert len(native.jobs) == 1
    assert again.seeds == [9, 10] and again.data == first.data and again.infotexts == first.infotexts
    assert again.images[0].size == (8, 8)
    client.txt2img("a red circle", seed=10, n=2)  # another seed: another key
    client.txt2img("a red circle")  # no seed: never cached
    client.txt2img("a red circle")
    assert len(native.jobs) == 4


def test_cache_is_off_by_default() -> None:
    native = FakeNative()
    client = Client("http://sdgate.test", transport=native.transport)
    client.txt2img("x", seed=1)
    client.txt2img("x", seed=1)
    assert len(native.jobs) == 2


def test_cache_key_covers_images_and_backend() -> None:
    from sdgate.client._cache import cache_key

    a = ImageRequest(prompt="x", seed=1, init_image=b"one")
    b = ImageRequest(prompt="x", seed=1, init_image=b"two")
    assert cache_key("sdgate+http://a", a) != cache_key("sdgate+http://a", b)
    assert cache_key("sdgate+http://a", a) != cache_key("a1111+http://a", a)
    assert cache_key("k", a) == cache_key("k", a.replace(metadata={"user": "z"}, priority=5))


def test_not_found_job() -> None:
    client = Client("http://sdgate.test", transport=FakeNative().transport)
    with pytest.raises(NotFoundError, match="no such job"):
        client.jobs.get("job_nope")
