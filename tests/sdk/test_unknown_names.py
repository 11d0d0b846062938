"""The SDK against the real app: a name the server does not have is ``NotFoundError`` with the
server's message, raised by ``generate`` (sync and async), and no job is made."""

from __future__ import annotations

import httpx
import pytest

from sdgate.client import AsyncClient, Client, ImageRequest, NotFoundError
from tests.sdk.conftest import ThreadedServer

MESSAGE = "model: no model named 'nosuch-model'; see GET /api/v1/models or sdgate models"


def test_generate_raises_not_found_with_the_servers_message(live_server: ThreadedServer) -> None:
    with Client(live_server.url, max_retries=0) as client:
        with pytest.raises(NotFoundError) as caught:
            client.generate(ImageRequest(prompt="a cat", model="nosuch-model"))
        assert caught.value.message == MESSAGE and caught.value.status == 404
        with pytest.raises(NotFoundError, match="no LoRA named 'gone'"):
            client.generate(ImageRequest(prompt="a cat", loras=("gone:0.5",)))
        with pytest.raises(NotFoundError, match="no style named 'ink'"):
            client.generate(ImageRequest(prompt="a cat", styles=("ink",)))
    assert httpx.get(f"{live_server.url}/api/v1/jobs").json()["jobs"] == []


async def test_async_generate_raises_not_found(live_server: ThreadedServer) -> None:
    async with AsyncClient(live_server.url, max_retries=0) as client:
        with pytest.raises(NotFoundError) as caught:
            await client.generate(ImageRequest(prompt="a cat", vae="nosuch-vae"))
    assert caught.value.message == "vae: no VAE named 'nosuch-vae'; see GET /api/v1/vaes"


def test_no_size_is_sent_when_none_is_given() -> None:
    from sdgate.client.backends.native import request_body

    body = request_body(ImageRequest(prompt="a cat"))
    assert "width" not in body and "height" not in body  # the server's per-model default applies
