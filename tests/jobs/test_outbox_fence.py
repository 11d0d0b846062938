"""The outbox's transaction-id fence on PostgreSQL (``outbox.read_after``): appends take no lock, so
a row may commit after one with a higher ``seq``; a follower still hands every row on exactly once,
none committed before it started, and does not wait for its poll when an older transaction that
wrote nothing ends. And on both databases: a reader may leave its own process's rows out."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from sdgate.core.jobs import JobEventKind
from sdgate.core.requests import GenerationRequest
from sdgate.jobs.database import transaction
from sdgate.jobs.outbox import OutboxEvent, OutboxFollower, read_after, write_event
from sdgate.jobs.store import SqlJobStore

from .conftest import PgServer

SLOW_POLL_S = 30.0  # longer than any test here: what arrives came through NOTIFY or the fence retry


@pytest.fixture(params=[pytest.param("postgresql", marks=pytest.mark.cluster)])
def pg_store(request: pytest.FixtureRequest, pg_server: PgServer) -> Iterator[SqlJobStore]:
    with pg_server.database() as url, SqlJobStore(url) as store:
        yield store


class Heard:
    def __init__(self) -> None:
        self.events: list[OutboxEvent] = []
        self._cond = threading.Condition()

    def __call__(self, event: OutboxEvent) -> None:
        with self._cond:
            self.events.append(event)
            self._cond.notify_all()

    def wait_for(self, count: int, timeout: float) -> list[OutboxEvent]:
        with self._cond:
            self._cond.wait_for(lambda: len(self.events) >= count, timeout)
            return list(self.events)


def _follower(store: SqlJobStore) -> tuple[OutboxFollower, Heard]:
    follower = OutboxFollower(store.database, origin="someone-else", poll_s=SLOW_POLL_S)
    heard = Heard()
    follower.add_listener(heard)
    return follower, heard


def test_a_row_that_commits_late_is_read_once_in_transaction_order(pg_store: SqlJobStore) -> None:
    early = pg_store.submit(GenerationRequest(prompt="early"))
    with pg_store.database.connect() as old:
        late_tx = old.begin()
        old.execute(sa.text("SELECT pg_current_xact_id()"))  # the old transaction has its id now
        before = pg_store.submit(GenerationRequest(prompt="committed before the follower started"))
        follower, heard = _follower(pg_store)
        follower.start()
        try:
            after = pg_store.submit(GenerationRequest(prompt="after"))
            time.sleep(0.5)
            assert heard.events == []  # behind the fence: the old transaction may still write
            late_seq = write_event(old, JobEventKind.PROGRESS, early, "late-writer")
            late_tx.commit()
            events = heard.wait_for(2, timeout=10)
            time.sleep(0.3)
            events = list(heard.events)
        finally:
            follower.stop()
    # The late row has the lower transaction id: it comes first, although its seq is higher.
    assert [(e.job.id, e.kind) for e in events] == [(early.id, JobEventKind.PROGRESS),
                                                     (after.id, JobEventKind.QUEUED)]
    assert events[0].seq == late_seq > events[1].seq
    assert before.id not in {e.job.id for e in events}


def test_an_older_transaction_that_writes_nothing_holds_rows_back_only_while_it_runs(
        pg_store: SqlJobStore) -> None:
    follower, heard = _follower(pg_store)
    follower.start()
    try:
        with pg_store.database.connect() as old:
            idle = old.begin()
            old.execute(sa.text("SELECT pg_current_xact_id()"))
            job = pg_store.submit(GenerationRequest(prompt="held"))
            time.sleep(0.5)
            assert heard.events == []
            idle.commit()  # sends no NOTIFY: the follower looks again by itself, long before its poll
            ended = time.monotonic()
        events = heard.wait_for(1, timeout=5)
        waited = time.monotonic() - ended
    finally:
        follower.stop()
    assert [e.job.id for e in events] == [job.id]
    assert waited < 2.0


def test_a_reader_may_leave_out_its_own_rows_and_its_cursor_passes_them(db_url: str) -> None:
    with SqlJobStore(db_url) as mine, SqlJobStore(db_url) as theirs:
        ours = mine.submit(GenerationRequest(prompt="mine"))
        other = theirs.submit(GenerationRequest(prompt="theirs"))
        mine.submit(GenerationRequest(prompt="mine again"))
        with mine.database.connect() as conn:
            everything = read_after(conn, (0, 0))
            others = read_after(conn, (0, 0), skip_origin=mine.origin)
            after = read_after(conn, others.cursor, skip_origin=mine.origin)
    assert [row.job_id for row in everything.rows][:2] == [ours.id, other.id]
    assert [row.job_id for row in others.rows] == [other.id]
    assert after.rows == []


def test_a_single_statement_read_runs_in_autocommit_on_postgresql_and_leaves_the_pool_as_it_was(
        pg_store: SqlJobStore) -> None:
    xact = sa.text("SELECT pg_current_xact_id()")
    with transaction(pg_store.database, write=False, single=True) as conn:
        assert conn.execute(xact).scalar() != conn.execute(xact).scalar()  # no BEGIN ... COMMIT
    for _ in range(3):  # every pooled connection is back in a transaction per block
        with transaction(pg_store.database, write=False) as conn:
            assert conn.execute(xact).scalar() == conn.execute(xact).scalar()
