"""The audit log's store (``sdgate.jobs.audit``) on SQLite and PostgreSQL: batched background
writes, queries with filters and a cursor, retention, and a full queue that drops instead of
blocking."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from sdgate.jobs import audit as audit_mod
from sdgate.jobs.audit import (
    AuditFilter,
    AuditLog,
    AuditRecord,
    delete_audit_before,
    key_matches,
    parse_when,
    query_audit,
)
from sdgate.jobs.database import create_db_engine, transaction, upgrade_schema
from sdgate.jobs.schema import api_keys, audit_log

T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
def database(db_url: str) -> Iterator[sa.Engine]:
    engine = create_db_engine(db_url)
    upgrade_schema(engine)
    try:
        yield engine
    finally:
        engine.dispose()


@pytest.fixture
def audit(database: sa.Engine) -> Iterator[AuditLog]:
    with AuditLog(database) as log:
        yield log


def rec(i: int, **kw: object) -> AuditRecord:
    values: dict[str, object] = {
        "at": T0 + timedelta(minutes=i), "method": "POST", "route": "/api/v1/jobs", "status": 201,
        "key_id": "key_a", "principal": "key_a", "dialect": "native", "request_id": f"req{i}",
    }
    values.update(kw)
    return AuditRecord(**values)  # type: ignore[arg-type]


def count(database: sa.Engine) -> int:
    with transaction(database, write=False) as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(audit_log)).scalar_one())


def test_records_are_written_in_the_background_and_read_back(audit: AuditLog, database: sa.Engine) -> None:
    audit.record(rec(0, job_id="job_1", images=2, gpu_seconds=1.5, filtered=False, prompt="a cat"))
    audit.record(rec(1, key_id=None, principal=None, dialect=None, status=401, route="/sdapi/v1/txt2img"))
    assert audit.flush()
    page = audit.query(AuditFilter())
    assert [r.request_id for r in page.records] == ["req1", "req0"]  # newest first
    newest, oldest = page.records
    assert newest.key_id is None and newest.status == 401 and newest.dialect is None
    assert (oldest.job_id, oldest.images, oldest.gpu_seconds, oldest.filtered, oldest.prompt) == (
        "job_1", 2, 1.5, False, "a cat")
    assert oldest.at == T0 and oldest.seq is not None and page.next_cursor is None


def test_many_records_go_in_few_transactions(database: sa.Engine) -> None:
    inserts: list[int] = []

    @sa.event.listens_for(database, "before_execute")
    def watch(conn: sa.Connection, clause: object, *_args: object) -> None:
        if isinstance(clause, sa.Insert) and clause.table is audit_log:
            inserts.append(1)

    with AuditLog(database, batch=100) as log:
        gate = threading.Event()
        original = log._insert

        def slow_first(rows: list[dict[str, object]]) -> None:
            gate.wait(5)  # the first insert waits while the calls queue up behind it
            original(rows)

        log._insert = slow_first  # type: ignore[method-assign]
        for i in range(250):
            log.record(rec(i))
        gate.set()
        assert log.flush()
    assert count(database) == 250
    assert len(inserts) <= 5  # one per batch, not one per record


def test_a_full_queue_drops_and_counts_instead_of_blocking(database: sa.Engine, caplog) -> None:
    log = AuditLog(database, max_queue=3)
    gate = threading.Event()
    original = log._insert

    def stuck(rows: list[dict[str, object]]) -> None:
        gate.wait(10)
        original(rows)

    log._insert = stuck  # type: ignore[method-assign]
    log.record(rec(0))  # the writer takes this one and waits
    time.sleep(0.2)
    started = time.monotonic()
    for i in range(1, 10):
        log.record(rec(i))
    assert time.monotonic() - started < 0.5  # never waits on the database
    assert log.dropped == 6  # 3 queued behind the stuck batch, 6 dropped
    assert sum("queue full" in r.message for r in caplog.records) == 1  # logged once
    gate.set()
    log.close()
    assert count(database) == 4


def test_close_flushes_what_is_queued_and_later_records_are_dropped(database: sa.Engine) -> None:
    log = AuditLog(database)
    for i in range(20):
        log.record(rec(i))
    log.close()
    assert count(database) == 20
    log.record(rec(99))
    assert log.dropped == 1
    assert count(database) == 20


def test_a_bad_value_never_loses_the_batch(audit: AuditLog, database: sa.Engine) -> None:
    audit.record(rec(0, principal="x" * 1000, request_id="r" * 128, route="/" + "y" * 400))
    audit.record(rec(1, principal="nul\x00user"))
    assert audit.flush()
    records = audit.query(AuditFilter()).records
    assert len(records) == 2
    assert records[0].principal == "nul\ufffduser"
    assert len(records[1].principal or "") == 255 and len(records[1].request_id or "") == 64


def test_a_batch_refused_for_one_row_keeps_the_others(audit: AuditLog, database: sa.Engine) -> None:
    original = audit._insert
    gate = threading.Event()

    def picky(rows: list[dict[str, object]]) -> None:
        gate.wait(5)  # the records queue up into one batch meanwhile
        if len(rows) > 1 or rows[0]["request_id"] == "req1":
            raise sa.exc.IntegrityError("INSERT", {}, Exception("refused"))
        original(rows)

    audit._insert = picky  # type: ignore[method-assign]
    for i in range(4):
        audit.record(rec(i))
    gate.set()
    assert audit.flush()
    assert sorted(r.request_id or "" for r in audit.query(AuditFilter()).records) == ["req0", "req2", "req3"]
    assert audit.dropped == 1


def test_filters_and_cursor(audit: AuditLog, database: sa.Engine) -> None:
    for i in range(10):
        audit.record(rec(i, key_id="key_a" if i % 2 else "key_b", principal="key_a" if i % 2 else "key_b",
                         status=201 if i < 8 else 429))
    audit.record(rec(10, key_id=None, principal="alice", route="/sdapi/v1/txt2img", status=200))
    assert audit.flush()

    def ids(flt: AuditFilter, **kw: object) -> list[str]:
        return [r.request_id or "" for r in query_audit(database, flt, **kw).records]  # type: ignore[arg-type]

    assert ids(AuditFilter(keys=("key_a",))) == ["req9", "req7", "req5", "req3", "req1"]
    assert ids(AuditFilter(keys=("alice",))) == ["req10"]  # a Basic user: its principal
    assert ids(AuditFilter(keys=("key_b", "alice"))) == ["req10", "req8", "req6", "req4", "req2", "req0"]
    assert ids(AuditFilter(since=T0 + timedelta(minutes=8))) == ["req10", "req9", "req8"]
    assert ids(AuditFilter(until=T0 + timedelta(minutes=2))) == ["req1", "req0"]
    assert ids(AuditFilter(route="/sdapi/v1/txt2img")) == ["req10"]
    assert ids(AuditFilter(status=429)) == ["req9", "req8"]
    assert ids(AuditFilter(keys=("nobody",))) == []

    seen: list[str] = []
    cursor: int | None = None
    while True:
        page = query_audit(database, AuditFilter(keys=("key_a", "key_b")), limit=3, cursor=cursor)
        seen += [r.request_id or "" for r in page.records]
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert seen == [f"req{i}" for i in range(9, -1, -1)]


def test_a_filter_with_nul_finds_what_was_stored(audit: AuditLog, database: sa.Engine) -> None:
    audit.record(rec(0, principal="nul\x00user", route="/a\x00b"))
    assert audit.flush()
    assert len(query_audit(database, AuditFilter(keys=("nul\x00user",))).records) == 1
    assert len(query_audit(database, AuditFilter(route="/a\x00b")).records) == 1
    assert key_matches(database, "x\x00y") == ("x\ufffdy",)


def test_retention_deletes_old_records_only(audit: AuditLog, database: sa.Engine, monkeypatch) -> None:
    monkeypatch.setattr(audit_mod, "_DELETE_BATCH", 4)  # several delete transactions
    for i in range(10):
        audit.record(rec(i))
    assert audit.flush()
    assert delete_audit_before(database, T0 + timedelta(minutes=7)) == 7
    assert [r.request_id for r in audit.query(AuditFilter()).records] == ["req9", "req8", "req7"]
    assert delete_audit_before(database, T0) == 0


def test_key_names_and_prefixes_resolve_to_the_key_id(database: sa.Engine) -> None:
    with transaction(database, write=True) as conn:
        conn.execute(sa.insert(api_keys).values(
            id="key_123", name="app1", prefix="sdg_ab12cd34", secret_hash="0" * 64, scopes=["generate"],
            limits={}, created_at=T0))
    assert key_matches(database, "app1") == ("app1", "key_123")
    assert key_matches(database, "sdg_ab12cd34") == ("sdg_ab12cd34", "key_123")
    whole = "sdg_ab12cd34" + "x" * 35  # the key itself: found by its prefix, never matched as text
    assert key_matches(database, whole) == ("key_123",)
    assert key_matches(database, "key_123") == ("key_123",)
    assert key_matches(database, "alice") == ("alice",)


def test_parse_when() -> None:
    now = datetime(2026, 12, 5, 3, 0, tzinfo=UTC)
    assert parse_when("1h", now=now) == now - timedelta(hours=1)
    assert parse_when("90s", now=now) == now - timedelta(seconds=90)
    assert parse_when("7d", now=now) == now - timedelta(days=7)
    assert parse_when("2026-12-01") == datetime(2026, 12, 1, tzinfo=UTC)
    assert parse_when("2026-12-01T10:00:00Z") == datetime(2026, 12, 1, 10, tzinfo=UTC)
    assert parse_when("2026-12-01T10:00:00+02:00") == datetime(2026, 12, 1, 8, tzinfo=UTC)
    earliest = datetime.min.replace(tzinfo=UTC)
    assert parse_when("99999999w", now=now) == earliest  # longer than the calendar: its start
    assert parse_when("0001-01-01T00:00:00+05:00") == earliest
    assert parse_when("9999-12-31T23:59:59-05:00") == datetime.max.replace(tzinfo=UTC)
    for bad in ("yesterday", "1y", "", "-1h", "2026-02-30"):
        with pytest.raises(ValueError):
            parse_when(bad, now=now)


def test_an_unreachable_database_is_retried_and_does_not_hold_up_shutdown(database: sa.Engine) -> None:
    from sdgate.core.errors import StorageUnreachable

    log = AuditLog(database)
    original = log._insert
    failures = [1]

    def flaky(rows: list[dict[str, object]]) -> None:
        if failures:
            failures.pop()
            raise StorageUnreachable("storage unavailable: could not reach the job database")
        original(rows)

    log._insert = flaky  # type: ignore[method-assign]
    log.record(rec(0))
    assert log.flush()
    assert count(database) == 1 and log.dropped == 0  # written on the retry

    def down(rows: list[dict[str, object]]) -> None:
        raise StorageUnreachable("storage unavailable: could not reach the job database")

    log._insert = down  # type: ignore[method-assign]
    log.record(rec(1))
    time.sleep(0.3)  # the writer is waiting to retry
    started = time.monotonic()
    log.close()
    assert time.monotonic() - started < 2
    assert log.dropped == 1 and count(database) == 1
