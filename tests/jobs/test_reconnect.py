"""PostgreSQL connections the server dropped (a restart terminates every backend) are replaced
before use: the pool checks each connection's socket at checkout (no ping round trip), so the next
call after the drop succeeds instead of failing once per pooled connection."""

from __future__ import annotations

import threading

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
    """Terminates every backend of ``url``'s database opened by ``application_name``."""
    admin = sa.create_engine(sa.make_url(url).set(drivername="postgresql+psycopg"), poolclass=sa.NullPool)
    try:
        with admin.connect() as conn:
            return len(conn.execute(
                sa.text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        "WHERE datname = current_database() AND application_name = :app "
                        "AND pid <> pg_backend_pid()"),
                {"app": application_name},
            ).all())
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
