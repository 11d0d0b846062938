"""The token bucket, on a fake clock, shared by threads and by tasks."""

from __future__ import annotations

import asyncio
import threading

import pytest

from sdgate.client import TokenBucket
from tests.sdk.fakes import FakeClock


def test_burst_then_rate() -> None:
    clock = FakeClock()
    bucket = TokenBucket(2.0, burst=3, clock=clock)
    assert [bucket.reserve() for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.reserve() == pytest.approx(0.5)  # the 4th waits for one refill
    assert bucket.reserve() == pytest.approx(1.0)  # the 5th for two
    clock.advance(1.0)
    assert bucket.reserve() == pytest.approx(0.5)  # 2 tokens came back; 3 were owed


def test_refill_is_capped_at_burst() -> None:
    clock = FakeClock()
    bucket = TokenBucket(1.0, burst=2, clock=clock)
    clock.advance(100)
    assert [bucket.reserve() for _ in range(3)] == [0.0, 0.0, pytest.approx(1.0)]


def test_acquire_sleeps_the_reserved_delay() -> None:
    clock = FakeClock()
    bucket = TokenBucket(4.0, burst=1, clock=clock)
    slept: list[float] = []
    bucket.acquire(slept.append)
    bucket.acquire(slept.append)
    assert slept == [pytest.approx(0.25)]


def test_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        TokenBucket(0)
    with pytest.raises(ValueError):
        TokenBucket(1, burst=0.5)


def test_threads_share_one_bucket_without_exceeding_the_rate() -> None:
    clock = FakeClock()
    bucket = TokenBucket(10.0, burst=1, clock=clock)
    delays: list[float] = []
    lock = threading.Lock()

    def worker() -> None:
        for _ in range(25):
            d = bucket.reserve()
            with lock:
                delays.append(d)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # 200 reservations at 10/s from a standing start: the slots are 0, 0.1, ..., 19.9 s, each taken once.
    assert sorted(round(d, 6) for d in delays) == [round(i / 10, 6) for i in range(200)]


async def test_tasks_and_threads_share_one_bucket() -> None:
    clock = FakeClock()
    bucket = TokenBucket(100.0, burst=1, clock=clock)
    delays: list[float] = []

    async def task() -> None:
        delays.append(bucket.reserve())

    thread = threading.Thread(target=lambda: [delays.append(bucket.reserve()) for _ in range(10)])
    thread.start()
    await asyncio.gather(*(task() for _ in range(10)))
    thread.join()
    assert sorted(round(d, 6) for d in delays) == [round(i / 100, 6) for i in range(20)]


async def test_acquire_async_really_waits() -> None:
    bucket = TokenBucket(200.0, burst=1)
    await bucket.acquire_async()
    assert await bucket.acquire_async() > 0
