"""Per-principal limits in the job database, on SQLite and PostgreSQL: the token bucket refills
with (a fake) time, image reservations never go over the day's limit however many nodes reserve at
once, a refund gives images back, and a new UTC day starts over."""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from sdgate.jobs.quotas import Quotas, seconds_to_next_day, utc_day
from sdgate.jobs.schema import daily_usage, rate_buckets
from sdgate.jobs.store import SqlJobStore
from tests.fakes import FakeWallClock as FakeClock

NOON = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(NOON)


@pytest.fixture
def quotas(store: SqlJobStore, clock: FakeClock) -> Quotas:
    return Quotas(store.database, clock=clock)


def run_at_once(
    nodes: list[SqlJobStore], per_node: int, call: Callable[[SqlJobStore], object]
) -> list[object]:
    """``call(node)`` from ``per_node`` threads per node, all released together; every answer."""
    threads = len(nodes) * per_node
    start = threading.Barrier(threads)
    answers: list[object] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def one(node: SqlJobStore) -> None:
        try:
            start.wait()
            answer = call(node)
            with lock:
                answers.append(answer)
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    workers = [threading.Thread(target=one, args=(node,)) for node in nodes for _ in range(per_node)]
    for t in workers:
        t.start()
    for t in workers:
        t.join(timeout=60)
    assert errors == []
    assert len(answers) == threads
    return answers


# -- the token bucket ------------------------------------------------------------------------------


def test_a_bucket_starts_full_and_refills_at_the_rate(quotas: Quotas, clock: FakeClock) -> None:
    for _ in range(3):
        assert quotas.take_token("ann", rate_per_min=60, burst=3) is None
    assert quotas.take_token("ann", rate_per_min=60, burst=3) == pytest.approx(1.0)
    clock.advance(0.25)
    assert quotas.take_token("ann", rate_per_min=60, burst=3) == pytest.approx(0.75)  # nothing taken
    clock.advance(0.75)
    assert quotas.take_token("ann", rate_per_min=60, burst=3) is None
    assert quotas.take_token("ann", rate_per_min=60, burst=3) == pytest.approx(1.0)
    # A long pause refills it to its size, never more.
    clock.advance(3600)
    taken = [quotas.take_token("ann", rate_per_min=60, burst=3) for _ in range(4)]
    assert taken[:3] == [None, None, None] and taken[3] == pytest.approx(1.0)


def test_the_default_burst_is_a_minutes_worth(quotas: Quotas, clock: FakeClock) -> None:
    answers = [quotas.take_token("ann", rate_per_min=6) for _ in range(7)]
    assert answers[:6] == [None] * 6
    assert answers[6] == pytest.approx(10.0)  # 6 a minute: one every 10 s
    clock.advance(10)
    assert quotas.take_token("ann", rate_per_min=6) is None


def test_each_principal_has_its_own_bucket(quotas: Quotas) -> None:
    assert quotas.take_token("ann", rate_per_min=1, burst=1) is None
    assert quotas.take_token("ann", rate_per_min=1, burst=1) == pytest.approx(60.0)
    assert quotas.take_token("bob", rate_per_min=1, burst=1) is None
    assert quotas.take_token("", rate_per_min=1, burst=1) is None  # the anonymous principal's row


def test_a_clock_behind_never_refills_twice(store: SqlJobStore, clock: FakeClock) -> None:
    ahead = Quotas(store.database, clock=clock)
    behind = Quotas(store.database, clock=lambda: clock.now - timedelta(seconds=30))
    assert ahead.take_token("ann", rate_per_min=60, burst=1) is None
    assert behind.take_token("ann", rate_per_min=60, burst=1) is not None
    # ``behind`` saw no time pass; the bucket's time stays ``ahead``'s, so ``ahead`` sees none either.
    assert ahead.take_token("ann", rate_per_min=60, burst=1) == pytest.approx(1.0)


def test_nodes_taking_tokens_at_once_never_spend_one_twice(
    store: SqlJobStore, db_url: str, clock: FakeClock
) -> None:
    nodes = [SqlJobStore(db_url) for _ in range(4)]
    try:
        answers = run_at_once(
            nodes, 5,
            lambda node: Quotas(node.database, clock=clock).take_token("ann", rate_per_min=60, burst=7),
        )
    finally:
        for node in nodes:
            node.close()
    assert answers.count(None) == 7
    with store.database.connect() as conn:
        assert conn.execute(sa.select(rate_buckets.c.tokens)).scalar_one() == pytest.approx(0.0)


# -- images per day --------------------------------------------------------------------------------


def test_reservations_stop_at_the_limit_and_refunds_give_back(quotas: Quotas) -> None:
    day = utc_day(NOON)
    assert quotas.reserve_images("ann", 3, limit=5, day=day)
    assert not quotas.reserve_images("ann", 3, limit=5, day=day)  # 6 > 5: refused whole
    assert quotas.usage("ann", day).images == 3
    assert quotas.reserve_images("ann", 2, limit=5, day=day)
    assert not quotas.reserve_images("ann", 1, limit=5, day=day)
    quotas.release_images("ann", 2, day=day)
    assert quotas.usage("ann", day).images == 3
    assert quotas.reserve_images("ann", 2, limit=5, day=day)
    assert not quotas.reserve_images("bob", 6, limit=5, day=day)  # more than the limit at once
    assert quotas.usage("bob", day).images == 0
    assert quotas.reserve_images("bob", 5, limit=5, day=day)  # bob is not ann


def test_a_refund_never_goes_below_zero(quotas: Quotas) -> None:
    day = utc_day(NOON)
    quotas.release_images("ann", 4, day=day)  # no row: nothing to do
    assert quotas.reserve_images("ann", 1, limit=5, day=day)
    quotas.release_images("ann", 4, day=day)
    assert quotas.usage("ann", day).images == 0


def test_concurrent_reservations_never_exceed_the_limit(store: SqlJobStore, db_url: str) -> None:
    nodes = [SqlJobStore(db_url) for _ in range(4)]
    day = utc_day(NOON)
    try:
        answers = run_at_once(
            nodes, 6, lambda node: Quotas(node.database).reserve_images("ann", 2, limit=15, day=day)
        )
    finally:
        for node in nodes:
            node.close()
    assert answers.count(True) == 7  # 7 x 2 = 14; an 8th would make 16
    assert Quotas(store.database).usage("ann", day).images == 14


def test_a_new_utc_day_starts_over(quotas: Quotas, clock: FakeClock) -> None:
    clock.now = datetime(2026, 3, 1, 23, 59, 30, tzinfo=UTC)
    assert seconds_to_next_day(clock.now) == pytest.approx(30.0)
    today = utc_day(quotas.now())
    assert quotas.reserve_images("ann", 5, limit=5, day=today)
    assert not quotas.reserve_images("ann", 1, limit=5, day=today)
    clock.advance(31)
    tomorrow = utc_day(quotas.now())
    assert tomorrow == "2026-03-02"
    assert quotas.reserve_images("ann", 5, limit=5, day=tomorrow)
    assert quotas.usage("ann", today).images == 5
    # A day is UTC's: 01:00 at +02:00 is still the day before in UTC.
    assert utc_day(datetime(2026, 3, 2, 1, 0, tzinfo=UTC) + timedelta(hours=0)) == "2026-03-02"
    assert utc_day(datetime.fromisoformat("2026-03-02T01:00:00+02:00")) == "2026-03-01"


def test_gpu_seconds_are_read_per_day(quotas: Quotas, store: SqlJobStore) -> None:
    day = utc_day(NOON)
    assert quotas.gpu_seconds_used("ann", day) == 0.0
    with store.database.begin() as conn:  # what jobs/usage.py writes when a job finishes
        conn.execute(sa.insert(daily_usage).values(principal="ann", day=day, images=0, gpu_seconds=12.5))
    assert quotas.gpu_seconds_used("ann", day) == pytest.approx(12.5)
    assert quotas.gpu_seconds_used("ann", "2026-03-02") == 0.0
    assert quotas.reserve_images("ann", 1, limit=5, day=day)  # the reservation keeps the seconds
    assert quotas.usage("ann", day).gpu_seconds == pytest.approx(12.5)


def test_prune_drops_old_days_and_idle_buckets_only(quotas: Quotas, clock: FakeClock) -> None:
    old_day, recent_day = utc_day(NOON - timedelta(days=40)), utc_day(NOON - timedelta(days=3))
    assert quotas.reserve_images("ann", 2, limit=10, day=old_day)
    assert quotas.reserve_images("ann", 3, limit=10, day=recent_day)
    assert quotas.take_token("idle", rate_per_min=60) is None
    clock.advance(8 * 24 * 3600)
    assert quotas.take_token("busy", rate_per_min=60) is None
    assert quotas.prune() == 2  # the 40-day-old usage row (now 48 days) and the idle bucket
    assert quotas.usage("ann", old_day).images == 0
    assert quotas.usage("ann", recent_day).images == 3  # 11 days old: still reportable
    with quotas._db.connect() as conn:
        buckets = set(conn.execute(sa.select(rate_buckets.c.principal)).scalars())
    assert buckets == {"busy"}
    assert quotas.prune() == 0
