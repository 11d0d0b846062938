"""A backend's ``Sleep`` goes through the client's injectable sleep, sync and async (issue 14), and
the fallback decisions live in the shared core."""

from __future__ import annotations

import asyncio
from collections.abc import Generator
from typing import Any

import httpx

from sdgate.client import AsyncClient, Client, ImageRequest
from sdgate.client._exceptions import APIConnectionError, BadRequestError
from sdgate.client._ops import Sleep


def polls() -> Generator[Any, Any, str]:
    yield Sleep(2.5)
    yield Sleep(0.5)
    return "done"


def refuse(request: httpx.Request) -> httpx.Response:
    raise httpx.ConnectError("refused")


def test_sync_sleep_op_uses_injected_sleep() -> None:
    slept: list[float] = []
    with Client("http://a.test", transport=httpx.MockTransport(refuse)) as client:
        client._sleep = slept.append
        assert client._run(polls(), client.backend) == "done"
    assert slept == [2.5, 0.5]


def test_async_sleep_op_uses_injected_sleep() -> None:
    slept: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        slept.append(seconds)

    async def main() -> Any:
        async with AsyncClient("http://a.test", transport=httpx.MockTransport(refuse)) as client:
            client._sleep = fake_sleep
            return await client._run(polls(), client.backend)

    assert asyncio.run(main()) == "done"
    assert slept == [2.5, 0.5]


def test_fallback_decisions_are_the_cores() -> None:
    with Client(backends=["http://a.test", "http://b.test"], max_retries=0) as client:
        first, second = list(client._attempts(ImageRequest.build("x"), progress=False))
        for attempt in (first, second):
            attempt.protocol.close()
        assert first.fallback is second.backend and second.fallback is None
        assert client._falls_back(first, APIConnectionError("down", url="http://a.test"))
        assert not client._falls_back(first, BadRequestError("no", status=400))
        assert not client._falls_back(second, APIConnectionError("down", url="http://b.test"))
