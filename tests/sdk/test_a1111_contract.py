"""The A1111 backend against the real sdgate app (FakeEngine): in-process for AsyncClient,
on a loopback port for Client."""

from __future__ import annotations

import httpx
import pytest

from sdgate.client import (
    A1111Backend,
    AsyncClient,
    AuthenticationError,
    BadRequestError,
    Client,
    ImageRequest,
    UnprocessableEntityError,
    UnsupportedFeatureError,
)
from sdgate.server.app import create_app
from sdgate.settings import Settings
from tests.fakes import FakeEngine
from tests.sdk.conftest import ThreadedServer


async def test_async_txt2img_models_and_stream(asgi_transport: httpx.ASGITransport) -> None:
    async with AsyncClient("a1111+http://sdgate", transport=asgi_transport) as client:
        assert isinstance(client.backend, A1111Backend)
        result = await client.txt2img(
            "a red circle", seed=42, n=2, width=64, height=48, steps=3, sampler="Euler a"
        )
        assert result.seeds == [42, 43]
        assert [im.size for im in result.images] == [(64, 48), (64, 48)]
        assert result.infotexts[0].startswith("a red circle\nSteps: 3, Sampler: Euler a")
        assert result.images[0].getpixel((0, 0)) == (42, 0, 0)  # the fake engine paints the seed
        assert "alpha" in [m.name for m in await client.models.list()]
        events = [e async for e in client.stream("a slow circle", seed=1, steps=5, width=64, height=64)]
        assert events[0].kind == "queued" and events[-1].kind == "succeeded"
        assert events[-1].result is not None and events[-1].result.seeds == [1]


async def test_async_errors_are_typed(asgi_transport: httpx.ASGITransport) -> None:
    async with AsyncClient("http://sdgate/sdapi/v1", transport=asgi_transport, max_retries=0) as client:
        assert client.backend.kind == "a1111"  # chosen by the URL's prefix
        # Valid by the schema, refused by the server: a 400 (an unknown sampler name).
        with pytest.raises(BadRequestError, match="sampler") as info:
            await client.generate(ImageRequest(prompt="x", sampler="No such sampler"))
        assert info.value.status == 400 and info.value.request_id
        # Refused by the schema (A1111's wire models bound every number): a 422.
        with pytest.raises(UnprocessableEntityError, match="steps"):
            await client.generate(ImageRequest(prompt="x", steps=-5))
        with pytest.raises(UnprocessableEntityError, match="steps"):
            await client.generate(ImageRequest(prompt="x", steps="many"))  # type: ignore[arg-type]


async def test_a1111_reports_fields_it_cannot_honour(asgi_transport: httpx.ASGITransport) -> None:
    async with AsyncClient("a1111+http://sdgate", transport=asgi_transport) as client:
        result = await client.txt2img("x", width=64, height=64, steps=2, metadata={"user": "a"})
        assert result.ignored_fields == ("metadata",)
        with pytest.raises(UnsupportedFeatureError, match="metadata"):
            await client.with_options(strict=True).txt2img("x", metadata={"user": "a"})


def test_sync_client_against_a_live_server(live_server: ThreadedServer) -> None:
    with Client(live_server.url + "/sdapi/v1") as client:
        result = client.txt2img("a red circle", seed=7, width=64, height=64, steps=2)
        assert result.seeds == [7] and result.images[0].size == (64, 64)
        assert "alpha" in [m.name for m in client.models.list()]
        events: list = []
        client.txt2img("a slow circle", seed=7, width=64, height=64, steps=20, on_progress=events.append)
        kinds = [e.kind for e in events]
        assert kinds[0] == "queued" and kinds[-1] == "succeeded"
        items = client.batch([f"prompt {i}" for i in range(6)], concurrency=3)
        assert all(item.ok for item in items) and [i.index for i in items] == list(range(6))


def test_basic_auth_against_a_live_server(sd_settings: Settings) -> None:
    settings = sd_settings.model_copy(update={"api_auth": "alice:secret"})
    with ThreadedServer(settings) as server:
        with Client(f"a1111+http://alice:secret@127.0.0.1:{server.port}") as client:
            assert "alpha" in [m.name for m in client.models.list()]
        with Client(f"a1111+{server.url}", max_retries=0) as client, pytest.raises(AuthenticationError):
            client.models.list()


def test_create_app_import_is_what_conftest_uses() -> None:
    assert callable(create_app) and FakeEngine().name == "fake"
