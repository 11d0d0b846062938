from __future__ import annotations

import socket
import threading
import warnings
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory

from sdgate.core.requests import GenerationRequest
from sdgate.jobs.database import (
    DatabaseUnreachable,
    SchemaChange,
    SchemaMismatch,
    alembic_config,
    create_db_engine,
    transaction,
    upgrade_schema,
)
from sdgate.jobs.schema import POSTGRESQL_ONLY, metadata
from sdgate.jobs.store import SqlJobStore


def _head() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head


def _version(engine: sa.Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def test_upgrade_creates_the_schema_on_an_empty_database(empty_db_url: str) -> None:
    engine = create_db_engine(empty_db_url)
    try:
        assert upgrade_schema(engine) == SchemaChange(None, _head())
        inspector = sa.inspect(engine)
        assert "jobs" in inspector.get_table_names()
        indexes = {ix["name"] for ix in inspector.get_indexes("jobs")}
        assert {"ix_jobs_claim", "ix_jobs_owner_seq", "ix_jobs_dialect_seq"} <= indexes
        assert _version(engine) == _head()
        if engine.dialect.name == "sqlite":
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
                "ORDER BY priority DESC, turn, seq LIMIT 1"
            ).all()
        detail = " ".join(str(row[-1]) for row in plan)
        assert "ix_jobs_claim" in detail and "TEMP B-TREE" not in detail
    finally:
        engine.dispose()


def test_upgrade_is_idempotent_and_keeps_data(empty_db_url: str) -> None:
    url = empty_db_url
    with SqlJobStore(url) as first:  # an empty database is created at head, PostgreSQL too
        job = first.submit(GenerationRequest(prompt="kept"))
    with SqlJobStore(url) as second:  # runs ``upgrade head`` again
        assert second.get(job.id) == job
    engine = create_db_engine(url)
    try:
        assert not upgrade_schema(engine).changed
        assert _version(engine) == _head()
    finally:
        engine.dispose()


def _described(obj: Any, name: str | None, type_: str, reflected: bool, _compare_to: Any) -> bool:
    """False for what ``schema.POSTGRESQL_ONLY`` names (the outbox's ``tx`` fence)."""
    table = getattr(obj, "table", None)
    return not (reflected and (type_, getattr(table, "name", None), name) in POSTGRESQL_ONLY)


def test_migrations_match_the_live_schema(empty_db_url: str) -> None:
    engine = create_db_engine(empty_db_url)
    try:
        upgrade_schema(engine)
        with engine.connect() as conn, warnings.catch_warnings():
            warnings.filterwarnings("ignore", "Did not recognize type 'xid8'", sa.exc.SAWarning)
            opts = {"compare_type": True, "include_object": _described}
            diff = compare_metadata(MigrationContext.configure(conn, opts=opts), metadata)
        assert diff == []  # schema.py changed without a migration (or the other way round)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "Did not recognize type 'xid8'", sa.exc.SAWarning)
            columns = {c["name"] for c in sa.inspect(engine).get_columns("job_events")}
        assert ("tx" in columns) is (engine.dialect.name == "postgresql")  # the fence: PostgreSQL's alone
    finally:
        engine.dispose()


def test_downgrade_to_base_and_back(empty_db_url: str) -> None:
    engine = create_db_engine(empty_db_url)
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


def test_concurrent_start_ups_migrate_once(empty_db_url: str) -> None:
    url = empty_db_url
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


# -- the start-up check (database.ensure_schema, run by every SqlJobStore) ---------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_a_schema_newer_than_the_code_is_refused_with_one_line(db_url: str) -> None:
    engine = create_db_engine(db_url)
    try:
        upgrade_schema(engine)
        with transaction(engine, write=True) as conn:
            conn.execute(sa.text("UPDATE alembic_version SET version_num = '9999_from_the_future'"))
        with pytest.raises(SchemaMismatch) as info:
            SqlJobStore(db_url)
        message = str(info.value)
        assert "9999_from_the_future, newer than this sdgate" in message and "\n" not in message
        with pytest.raises(SchemaMismatch):  # nor does `sdgate db upgrade` touch it
            upgrade_schema(engine)
        assert _version(engine) == "9999_from_the_future"
    finally:
        engine.dispose()


def test_an_older_schema_is_upgraded_on_sqlite_and_refused_on_postgresql(empty_db_url: str) -> None:
    engine = create_db_engine(empty_db_url)
    try:
        config = alembic_config()
        with transaction(engine, write=True) as conn:
            config.attributes["connection"] = conn
            command.upgrade(config, "0002_native_api")
        if engine.dialect.name == "sqlite":  # embedded mode: no extra step for users
            SqlJobStore(empty_db_url).close()
            assert _version(engine) == _head()
            return
        with pytest.raises(SchemaMismatch) as info:
            SqlJobStore(empty_db_url)
        assert "older than this sdgate" in str(info.value)
        assert "run `sdgate db upgrade --database URL` once" in str(info.value)
        assert _version(engine) == "0002_native_api"  # left alone
        assert upgrade_schema(engine) == SchemaChange("0002_native_api", _head())
        SqlJobStore(empty_db_url).close()
    finally:
        engine.dispose()


def test_an_unreachable_database_is_one_line_naming_it_without_the_password() -> None:
    port = _free_port()
    url = f"postgresql://me:hunter2@127.0.0.1:{port}/nowhere"  # nothing listens there
    with pytest.raises(DatabaseUnreachable) as info:
        SqlJobStore(url)
    message = str(info.value)
    assert message.startswith(f"could not reach the job database at postgresql+psycopg://me:***@127.0.0.1:{port}/")
    assert "hunter2" not in message and "\n" not in message
