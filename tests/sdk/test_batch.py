"""batch() and map(): bounded concurrency, per-item errors, results on disk as they come, resume."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from pathlib import Path

import httpx

from sdgate.client import AsyncClient, Client, ImageRequest, JobFailedError
from tests.sdk.fakes import FakeNative


class Gauge:
    """Counts requests in flight at once through a slow MockTransport."""

    def __init__(self, native: FakeNative, delay: float = 0.01) -> None:
        self.native, self.delay = native, delay
        self.now = self.peak = 0
        self.lock = threading.Lock()

    def handle(self, request: httpx.Request) -> httpx.Response:
        with self.lock:
            self.now += 1
            self.peak = max(self.peak, self.now)
        try:
            time.sleep(self.delay)
            return self.native.handle(request)
        finally:
            with self.lock:
                self.now -= 1

    async def ahandle(self, request: httpx.Request) -> httpx.Response:
        self.now += 1
        self.peak = max(self.peak, self.now)
        try:
            await asyncio.sleep(self.delay)
            return self.native.handle(request)
        finally:
            self.now -= 1


def test_batch_bounded_with_per_item_errors(tmp_path: Path) -> None:
    native = FakeNative(steps=1)
    gauge = Gauge(native)
    client = Client("http://sdgate.test", transport=httpx.MockTransport(gauge.handle))
    prompts = ["a", "b", "please fail", "d", {"prompt": "e", "seed": 3, "n": 2}, ImageRequest(prompt="f")]
    seen: list[int] = []
    items = client.batch(
        prompts, concurrency=2, output_dir=tmp_path, on_item=lambda it: seen.append(it.index)
    )
    assert [it.index for it in items] == list(range(6)) and sorted(seen) == list(range(6))
    assert gauge.peak <= 2
    assert [it.ok for it in items] == [True, True, False, True, True, True]
    assert isinstance(items[2].error, JobFailedError) and items[2].result is None
    assert items[4].result is not None and items[4].result.seeds == [3, 4] and len(items[4].paths) == 2
    records = sorted(tmp_path.glob("*.json"))
    assert len(records) == 5 and not any(tmp_path.glob("00002-*"))
    record = json.loads(next(p for p in records if p.name.startswith("00004-")).read_text())
    assert record["seeds"] == [3, 4] and record["prompt"] == "e"


def test_batch_resumes_skipping_finished_items(tmp_path: Path) -> None:
    native = FakeNative(steps=1)
    client = Client("http://sdgate.test", transport=native.transport)
    prompts = ["a", "please fail", "c"]
    client.batch(prompts, concurrency=3, output_dir=tmp_path)
    assert len(native.jobs) == 3
    again = client.batch(prompts, concurrency=3, output_dir=tmp_path)
    assert [it.skipped for it in again] == [True, False, True]
    assert len(native.jobs) == 4  # only the failed one ran again
    assert again[0].paths and all(p.exists() for p in again[0].paths)
    # a half-written item (images but no record) runs again
    record = next(tmp_path.glob("00002-*.json"))
    record.unlink()
    assert [it.skipped for it in client.batch(prompts, output_dir=tmp_path)] == [True, False, False]


async def test_async_map_yields_as_they_finish_and_is_bounded(tmp_path: Path) -> None:
    native = FakeNative(steps=1)
    gauge = Gauge(native)
    async with AsyncClient("http://sdgate.test", transport=httpx.MockTransport(gauge.ahandle)) as client:
        got = [
            item
            async for item in client.map(
                [f"p{i}" for i in range(10)] + ["fail"], concurrency=3, output_dir=tmp_path
            )
        ]
        assert sorted(it.index for it in got) == list(range(11))
        assert gauge.peak <= 3
        assert [it.ok for it in got].count(False) == 1
        again = await client.batch([f"p{i}" for i in range(10)], concurrency=4, output_dir=tmp_path)
        assert all(it.skipped for it in again)


async def test_async_map_stops_cleanly_when_abandoned() -> None:
    native = FakeNative(steps=1)
    async with AsyncClient("http://sdgate.test", transport=native.transport) as client:
        stream = client.map([f"p{i}" for i in range(20)], concurrency=2)
        first = await anext(stream)
        await stream.aclose()
    assert first.ok and len(native.jobs) < 20
