"""``sdgate db upgrade`` / ``sdgate db current`` on both databases, and what a bad database gets:
one line and exit 1, never a traceback."""

from __future__ import annotations

import socket

import sqlalchemy as sa
from typer.testing import CliRunner

from sdgate.cli.main import app
from sdgate.jobs.database import create_db_engine, describe, head_revision, transaction
from sdgate.jobs.store import SqlJobStore

runner = CliRunner()


def _run(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, ["db", *args])
    return result.exit_code, result.output


def test_upgrade_creates_then_says_it_is_current(empty_db_url: str) -> None:
    head = head_revision()
    code, out = _run("upgrade", "--database", empty_db_url)
    assert code == 0, out
    assert out.strip() == f"{describe(empty_db_url)}: upgraded from an empty database to {head}"
    code, out = _run("upgrade", "--database", empty_db_url)
    assert code == 0 and out.strip().endswith(f": already at {head}")
    code, out = _run("current", "--database", empty_db_url)
    assert code == 0 and out.strip().endswith(f"{head} (this sdgate: {head}; up to date)")
    SqlJobStore(empty_db_url).close()  # and a node starts on it


def test_a_newer_schema_is_one_line_and_exit_1(db_url: str) -> None:
    SqlJobStore(db_url).close()
    engine = create_db_engine(db_url)
    try:
        with transaction(engine, write=True) as conn:
            conn.execute(sa.text("UPDATE alembic_version SET version_num = '9999_future'"))
    finally:
        engine.dispose()
    code, out = _run("upgrade", "--database", db_url)
    assert code == 1
    lines = out.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("SchemaMismatch: ")
    assert "newer than this sdgate" in lines[0]


def test_an_unreachable_database_is_one_line_and_exit_1() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    code, out = _run("upgrade", "--database", f"postgresql://me:hunter2@127.0.0.1:{port}/db")
    assert code == 1
    where = f"postgresql+psycopg://me:***@127.0.0.1:{port}/db"
    assert out.startswith(f"DatabaseUnreachable: could not reach the job database at {where}: ")
    assert "hunter2" not in out and "Traceback" not in out


def test_a_url_sdgate_does_not_speak_is_a_usage_error() -> None:
    code, out = _run("upgrade", "--database", "mysql://u@h/db")
    assert code == 2 and "'mysql' is not supported" in out
