from __future__ import annotations

import threading
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory

from sdgate.core.requests import GenerationRequest
from sdgate.jobs.database import alembic_config, create_db_engine, transaction, upgrade_schema
from sdgate.jobs.schema import metadata
from sdgate.jobs.store import SqlJobStore


def _head() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head


def _version(engine: sa.Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def test_upgrade_creates_the_schema_on_an_empty_database(tmp_path: Path) -> None:
    engine = create_db_engine(f"sqlite:///{tmp_path / 'fresh' / 'db.sqlite'}")
    try:
        upgrade_schema(engine)
        inspector = sa.inspect(engine)
        assert "jobs" in inspector.get_table_names()
        indexes = {ix["name"] for ix in inspector.get_indexes("jobs")}
        assert {"ix_jobs_claim", "ix_jobs_owner_seq", "ix_jobs_dialect_seq"} <= indexes
        assert _version(engine) == _head()
        with engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    finally:
        engine.dispose()


def test_the_claim_query_uses_its_index(tmp_path: Path) -> None:
    engine = create_db_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    try:
        upgrade_schema(engine)
        with engine.connect() as conn:
            plan = conn.exec_driver_sql(
                "EXPLAIN QUERY PLAN SELECT seq FROM jobs WHERE state = 'queued' "
                "ORDER BY priority DESC, seq LIMIT 1"
            ).all()
        detail = " ".join(str(row[-1]) for row in plan)
        assert "ix_jobs_claim" in detail and "TEMP B-TREE" not in detail
    finally:
        engine.dispose()


def test_upgrade_is_idempotent_and_keeps_data(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    with SqlJobStore(url) as first:
        job = first.submit(GenerationRequest(prompt="kept"))
    with SqlJobStore(url) as second:  # runs ``upgrade head`` again
        assert second.get(job.id) == job
    engine = create_db_engine(url)
    try:
        upgrade_schema(engine)
        assert _version(engine) == _head()
    finally:
        engine.dispose()


def test_migrations_match_the_live_schema(tmp_path: Path) -> None:
    engine = create_db_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    try:
        upgrade_schema(engine)
        with engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), metadata)
        assert diff == []  # schema.py changed without a migration (or the other way round)
    finally:
        engine.dispose()


def test_downgrade_to_base_and_back(tmp_path: Path) -> None:
    engine = create_db_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    try:
        upgrade_schema(engine)
        config = alembic_config()
        with transaction(engine, write=True) as conn:
            config.attributes["connection"] = conn
            command.downgrade(config, "base")
        assert "jobs" not in sa.inspect(engine).get_table_names()
        upgrade_schema(engine)
        assert "jobs" in sa.inspect(engine).get_table_names()
    finally:
        engine.dispose()


def test_concurrent_start_ups_migrate_once(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    errors: list[BaseException] = []
    start = threading.Barrier(4)

    def open_store() -> None:
        try:
            start.wait()
            SqlJobStore(url).close()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=open_store) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert errors == []


@pytest.mark.parametrize("url", ["sqlite:///unused.db", "postgresql://user@host/db"])
def test_migrations_render_offline_for_sqlite_and_postgresql(
    url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    command.upgrade(alembic_config(url), "head", sql=True)
    sql = capsys.readouterr().out
    assert "CREATE TABLE jobs" in sql
    assert "CREATE INDEX ix_jobs_claim ON jobs (state, priority DESC, seq)" in sql
    if url.startswith("postgresql"):
        assert "JSONB" in sql and "TIMESTAMP WITH TIME ZONE" in sql
