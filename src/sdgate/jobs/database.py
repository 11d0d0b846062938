"""Connecting to the jobs database and bringing its schema to the newest Alembic migration.

SQLite (embedded mode) gets WAL, a busy timeout and transactions begun by us rather than by the
``sqlite3`` module: reads use ``BEGIN`` and writes ``BEGIN IMMEDIATE``, so a write transaction takes
the write lock up front and two threads or processes never interleave a read-then-write (a claim).
PostgreSQL (cluster mode) needs nothing special here: the claim uses ``FOR UPDATE SKIP LOCKED``.

A full or read-only disk surfaces from ``transaction`` as ``StorageFull`` / ``StorageUnavailable``
(see ``storage.py``) and is remembered per engine (``storage_health``) until a write succeeds again.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.config import Config

from sdgate.core.errors import StorageUnavailable
from sdgate.jobs.storage import StorageHealth, storage_error

MIGRATIONS_DIR = Path(__file__).with_name("migrations")
SQLITE_BUSY_TIMEOUT_S = 30.0
# Execution option that makes ``begin`` take SQLite's write lock at once.
_WRITE = "sdgate_write"
_WROTE = "sdgate_wrote"  # conn.info: this transaction ran an INSERT/UPDATE/DELETE
# Any constant: serialises concurrent ``upgrade_schema`` calls on one PostgreSQL database.
_PG_MIGRATION_LOCK = 0x5D6A7E
DATABASE = "the job database"
# A probe write must find at least this much room beside a SQLite file.
_PROBE_BYTES = 64 * 1024
_health: weakref.WeakKeyDictionary[sa.Engine, StorageHealth] = weakref.WeakKeyDictionary()
_health_lock = threading.Lock()


def create_db_engine(url: str) -> sa.Engine:
    parsed = sa.make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return sa.create_engine(parsed, pool_pre_ping=True)

    memory = parsed.database in (None, "", ":memory:")
    kwargs: dict[str, Any] = {"connect_args": {"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_S}}
    if memory:
        # One shared connection, or every thread would see its own empty database.
        kwargs["poolclass"] = sa.StaticPool
    else:
        folder = Path(parsed.database or "").parent
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            fault = storage_error(DATABASE, exc)
            if fault is None:
                raise
            raise fault from exc
    engine = sa.create_engine(parsed, **kwargs)

    @sa.event.listens_for(engine, "connect")
    def _configure(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # we emit BEGIN ourselves, see _begin
        cursor = dbapi_conn.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {int(SQLITE_BUSY_TIMEOUT_S * 1000)}")
        if not memory:
            _enable_wal(cursor)
            cursor.execute("PRAGMA synchronous = NORMAL")
        cursor.close()

    @sa.event.listens_for(engine, "begin")
    def _begin(conn: sa.Connection) -> None:
        immediate = conn.get_execution_options().get(_WRITE, False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine


def _enable_wal(cursor: Any) -> None:
    # Switching a new file to WAL answers "database is locked" at once, without the busy handler,
    # while another connection switches it too (several processes starting on a fresh data dir).
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_S
    delay = 0.005
    while True:
        try:
            if cursor.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                cursor.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 0.1)


@contextmanager
def transaction(engine: sa.Engine, *, write: bool) -> Iterator[sa.Connection]:
    """One transaction; ``write=True`` takes SQLite's write lock before the first statement.
    Raises ``StorageFull`` / ``StorageUnavailable`` when the disk refuses it."""
    health = storage_health(engine)
    wrote = False
    try:
        with engine.connect() as conn:
            if write:
                conn.execution_options(**{_WRITE: True})
            conn.info[_WROTE] = False
            with conn.begin():
                yield conn
            wrote = conn.info.pop(_WROTE, False)
    except (sa.exc.DBAPIError, OSError) as exc:
        fault = storage_error(DATABASE, exc)
        if fault is None:
            raise
        health.failed(fault)
        raise fault from exc
    # Only a committed INSERT/UPDATE/DELETE shows that the disk takes writes again: a write
    # transaction that found nothing to change (a lease sweep, an empty claim) proves nothing.
    if wrote:
        health.succeeded()


def _note_write(conn: sa.Connection, _cursor: Any, statement: str, *_args: Any) -> None:
    if statement.lstrip()[:6].upper() in ("INSERT", "UPDATE", "DELETE"):
        conn.info[_WROTE] = True


def storage_health(engine: sa.Engine) -> StorageHealth:
    """The last storage fault of ``engine``'s database, until a write succeeds again."""
    with _health_lock:
        health = _health.get(engine)
        if health is None:
            health = _health[engine] = StorageHealth()
            sa.event.listen(engine, "before_cursor_execute", _note_write)
        return health


def probe_write(engine: sa.Engine) -> None:
    """One real write, to learn whether the database takes writes again: some room beside a SQLite
    file, then a write transaction. Raises ``StorageUnavailable`` (and records it) when not."""
    url = engine.url
    if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
        probe = Path(url.database or "").parent / f".sdgate-probe-{os.getpid()}-{threading.get_ident()}"
        try:
            with probe.open("wb") as fh:
                fh.write(bytes(_PROBE_BYTES))
                fh.flush()
                os.fsync(fh.fileno())
        except OSError as exc:
            fault = storage_error(DATABASE, exc) or StorageUnavailable(
                f"storage unavailable: could not write {DATABASE} ({exc})"
            )
            storage_health(engine).failed(fault)
            raise fault from exc
        finally:
            with suppress(OSError):
                probe.unlink()
    with transaction(engine, write=True) as conn:
        # Every database we open has this table: rewriting its row is a write that changes nothing.
        conn.execute(sa.text("UPDATE alembic_version SET version_num = version_num"))


def alembic_config(url: str | None = None) -> Config:
    """An Alembic config built in code: no alembic.ini is needed at run time."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    if url is not None:
        config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def upgrade_schema(engine: sa.Engine) -> None:
    """``alembic upgrade head`` in one transaction; safe to run from several processes at once."""
    config = alembic_config()
    with transaction(engine, write=True) as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_MIGRATION_LOCK})
        config.attributes["connection"] = conn
        command.upgrade(config, "head")
