"""PostgreSQL connections the server dropped (a restart terminates every backend) are replaced
before use: the pool checks each connection's socket at checkout (no ping round trip), so the next
call after the drop succeeds instead of failing once per pooled connection."""

from __future__ import annotations

import threading
import time

import pytest
import sqlalchemy as sa

from sdgate.core.requests import GenerationRequest
from sdgate.jobs.database import create_db_engine
from sdgate.jobs.store import SqlJobStore

pytestmark = pytest.mark.cluster


@pytest.fixture
def pg_url(pg_server) -> object:  # type: ignore[no-untyped-def]
    with pg_server.database() as url:
        yield url


def _terminate_others(url: str, application_name: str = "sdgate") -> int:
    """Terminates every backend of ``url``'s database opened by ``application_name``, and returns
    once they are gone (``pg_terminate_backend`` only signals them: until a backend has exited, its
    socket still looks open to the client, which is not what a dropped server looks like)."""
    admin = sa.create_engine(sa.make_url(url).set(drivername="postgresql+psycopg"), poolclass=sa.NullPool)
    others = ("FROM pg_stat_activity WHERE datname = current_database() AND application_name = :app "
              "AND pid <> pg_backend_pid()")
    try:
        with admin.connect() as conn:
            pids = [row.pid for row in conn.execute(
                sa.text(f"SELECT pid, pg_terminate_backend(pid) {others}"), {"app": application_name})]
            deadline = time.monotonic() + 10
            gone = "SELECT count(*) FROM pg_stat_activity WHERE pid = ANY(:pids)"
            conn.commit()  # pg_stat_activity is a snapshot per transaction: a fresh one each look
            while pids and conn.execute(sa.text(gone), {"pids": pids}).scalar():
                conn.commit()
                assert time.monotonic() < deadline, "terminated backends did not exit"
                time.sleep(0.02)
            time.sleep(0.05)  # their sockets' close reaches this process
            return len(pids)
    finally:
        admin.dispose()


def _fill_pool(store: SqlJobStore, n: int) -> None:
    """``n`` connections checked out at once, then back in the pool."""
    barrier = threading.Barrier(n)

    def hold() -> None:
        with store.database.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
            barrier.wait(10)

    threads = [threading.Thread(target=hold) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)


def test_every_call_after_the_server_dropped_the_pool_succeeds(pg_url: str) -> None:
    with SqlJobStore(pg_url) as store:
        job = store.submit(GenerationRequest(prompt="kept"))
        _fill_pool(store, 4)
        assert store.database.pool.checkedin() >= 4  # type: ignore[attr-defined]
        assert _terminate_others(pg_url) >= 4
        for _ in range(8):  # each pooled connection is dead: none may reach a caller
            assert store.get(job.id).id == job.id
        assert store.claim_next("w") is not None


def test_a_checkout_costs_no_round_trip(pg_url: str) -> None:
    engine = create_db_engine(pg_url)
    try:
        assert not engine.pool._pre_ping  # type: ignore[attr-defined]
    finally:
        engine.dispose()
