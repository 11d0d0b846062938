"""Connecting to the jobs database and bringing its schema to the newest Alembic migration.

SQLite (embedded mode) gets WAL, a busy timeout and transactions begun by us rather than by the
``sqlite3`` module: reads use ``BEGIN`` and writes ``BEGIN IMMEDIATE``, so a write transaction takes
the write lock up front and two threads or processes never interleave a read-then-write (a claim).
PostgreSQL (cluster mode, psycopg 3) runs at READ COMMITTED: a read-then-write there locks what it
read (``FOR UPDATE [SKIP LOCKED]``, see ``store.py``), and ``serialize`` takes a transaction-level
advisory lock where a whole table must take turns (queue limits at submit); on
SQLite ``serialize`` is a no-op, the write transaction being exclusive already.

The schema at start (``ensure_schema``): an empty database is created at the newest migration on
both; an older SQLite schema is upgraded in place (embedded mode needs no extra step), an older
PostgreSQL schema is refused with "run `sdgate db upgrade`" (several nodes share it: upgrading is an
operator's decision, taken once); a schema newer than this code is refused on both
(``SchemaMismatch``). A database that cannot be reached at all raises ``DatabaseUnreachable``. Both
messages are one line naming the database (password hidden), for the CLI to print as they are.

A full or read-only disk surfaces from ``transaction`` as ``StorageFull`` / ``StorageUnavailable``
(see ``storage.py``) and is remembered per engine (``storage_health``) until a write succeeds again.
"""

from __future__ import annotations

import hashlib
import os
import select
import sqlite3
import threading
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory

from sdgate.core.errors import StorageFull, StorageUnavailable, StorageUnreachable
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


# PostgreSQL connections of one process: an API node runs its store calls in asyncio's thread pool
# (and the outbox, webhooks and retention beside them), a worker a few threads. Past the pool a
# caller waits up to POOL_TIMEOUT_S for a connection.
PG_POOL_SIZE = 10
PG_MAX_OVERFLOW = 20
PG_POOL_TIMEOUT_S = 30.0
PG_CONNECT_TIMEOUT_S = 10


class DatabaseUnreachable(RuntimeError):
    """The database could not be reached or opened; the message names it (password hidden)."""


class SchemaMismatch(RuntimeError):
    """The database's schema is not the one this code needs; the message says what to do."""


def describe(url: sa.URL | str) -> str:
    """``url`` for messages: the password hidden."""
    return sa.make_url(url).render_as_string(hide_password=True)


def normalize_url(url: str | sa.URL) -> sa.URL:
    """``postgresql://`` means psycopg 3 (SQLAlchemy's default driver for it is psycopg2)."""
    parsed = sa.make_url(url)
    if parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed


def create_db_engine(url: str | sa.URL) -> sa.Engine:
    parsed = normalize_url(url)
    if parsed.get_backend_name() != "sqlite":
        connect_args: dict[str, Any] = {"connect_timeout": PG_CONNECT_TIMEOUT_S}
        if "application_name" not in parsed.query:
            connect_args["application_name"] = "sdgate"
        engine = sa.create_engine(
            parsed,
            pool_size=PG_POOL_SIZE,
            max_overflow=PG_MAX_OVERFLOW,
            pool_timeout=PG_POOL_TIMEOUT_S,
            connect_args=connect_args,
        )
        sa.event.listen(engine, "checkout", _drop_if_closed_by_server)
        return engine

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


def _drop_if_closed_by_server(dbapi_conn: Any, _record: Any, _proxy: Any) -> None:
    """A pooled PostgreSQL connection the server dropped (a restart, ``pg_terminate_backend``) is
    replaced before use, without a round trip per checkout (``pool_pre_ping`` pings every time).

    An idle connection has nothing to read; the server closing it sends its error (57P01
    "terminating connection") and then end-of-file, so the socket turns readable. Only then is it
    pinged, and ``DisconnectionError`` makes the pool open a fresh one instead. A connection lost
    silently (a network gone) fails at its first statement: SQLAlchemy then invalidates the whole
    pool (every connection opened before), the caller gets ``StorageUnreachable`` once and retries.
    """
    if dbapi_conn.closed:
        raise sa.exc.DisconnectionError("the connection is closed")
    try:
        readable, _, _ = select.select([dbapi_conn.fileno()], [], [], 0)
    except (OSError, ValueError) as exc:
        raise sa.exc.DisconnectionError(f"the connection's socket is gone ({exc})") from exc
    if not readable:
        return
    try:
        dbapi_conn.execute("SELECT 1")
        dbapi_conn.rollback()
    except Exception as exc:
        raise sa.exc.DisconnectionError(f"the server closed the connection ({exc})") from exc


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
def transaction(engine: sa.Engine, *, write: bool, single: bool = False) -> Iterator[sa.Connection]:
    """One transaction; ``write=True`` takes SQLite's write lock before the first statement.
    ``single=True`` (one statement, which is its own snapshot and its own transaction: a read, or a
    write whose every part is in that statement): on PostgreSQL it runs in autocommit, two round
    trips (BEGIN, COMMIT) fewer. Raises ``StorageFull`` / ``StorageUnavailable`` when the disk
    refuses it."""
    health = storage_health(engine)
    wrote = False
    try:
        with engine.connect() as conn:
            if write:
                conn.execution_options(**{_WRITE: True})
            if single and conn.dialect.name == "postgresql":
                conn.execution_options(isolation_level="AUTOCOMMIT")
            conn.info[_WROTE] = False
            with conn.begin():
                yield conn
            wrote = conn.info.pop(_WROTE, False)
    except (sa.exc.DBAPIError, OSError) as exc:
        fault = storage_error(DATABASE, exc) or _lost_server(engine, exc)
        if fault is None:
            raise
        health.failed(fault)
        raise fault from exc
    # Only a committed INSERT/UPDATE/DELETE shows that the disk takes writes again: a write
    # transaction that found nothing to change (a lease sweep, an empty claim) proves nothing.
    if wrote:
        health.succeeded()


def _lost_server(engine: sa.Engine, exc: BaseException) -> StorageUnavailable | None:
    """A PostgreSQL server that cannot be reached (down, restarting, the network) is storage that is
    unavailable: a 503 for the request, a retry for the worker; the pool reconnects once it is back."""
    if engine.dialect.name != "postgresql" or not isinstance(exc, sa.exc.DBAPIError):
        return None
    sqlstate = getattr(exc.orig, "sqlstate", None)
    lost = (
        exc.connection_invalidated
        or (isinstance(exc, sa.exc.OperationalError | sa.exc.InterfaceError) and sqlstate is None)
        or (sqlstate or "").startswith("08")  # connection_exception
        or sqlstate in ("57P01", "57P02", "57P03")  # shutdown, crash shutdown, cannot connect now
    )
    if not lost:
        return None
    detail = str(exc.orig).strip().splitlines()[0] if exc.orig is not None else type(exc).__name__
    return StorageUnreachable(f"storage unavailable: could not reach {DATABASE} ({detail})")


def serialize(conn: sa.Connection, name: str) -> None:
    """Inside a write transaction: the callers naming ``name`` take turns until this transaction
    ends (PostgreSQL: an advisory transaction lock; SQLite: already so, the write lock is global)."""
    if conn.dialect.name == "postgresql":
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": lock_key(name)})


def lock_key(name: str) -> int:
    """The PostgreSQL advisory lock ``serialize(conn, name)`` takes."""
    return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "big", signed=True)


def _note_write(conn: sa.Connection, _cursor: Any, statement: str, *_args: Any) -> None:
    if statement.lstrip()[:6].upper() in ("INSERT", "UPDATE", "DELETE"):
        conn.info[_WROTE] = True


def note_written(conn: sa.Connection) -> None:
    """Inside ``transaction``: a statement the first word of which does not say so (``WITH ...``)
    wrote, so its commit shows that the disk takes writes."""
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


def head_revision() -> str:
    """The newest migration this code has."""
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head


def schema_revision(conn: sa.Connection) -> str | None:
    """The database's migration (None: an empty database)."""
    return MigrationContext.configure(conn).get_current_revision()


@dataclass(frozen=True)
class SchemaChange:
    before: str | None  # None: the database was empty
    after: str

    @property
    def changed(self) -> bool:
        return self.before != self.after


def upgrade_schema(engine: sa.Engine, *, outdated: bool = True) -> SchemaChange:
    """``alembic upgrade head`` in one transaction; safe to run from several processes at once.
    An empty database is always brought to head; an older schema only with ``outdated`` (else
    ``SchemaMismatch`` saying to run ``sdgate db upgrade``); a newer one never (``SchemaMismatch``).
    ``DatabaseUnreachable`` when the database cannot be reached or opened."""
    config = alembic_config()
    head = head_revision()
    try:
        with transaction(engine, write=True) as conn:
            if conn.dialect.name == "postgresql":
                conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_MIGRATION_LOCK})
            current = schema_revision(conn)
            if current == head:
                return SchemaChange(current, head)
            known = {rev.revision for rev in ScriptDirectory.from_config(config).walk_revisions()}
            if current is not None and current not in known:
                raise SchemaMismatch(
                    f"{DATABASE} {describe(engine.url)} has schema {current}, newer than this sdgate "
                    f"(which knows up to {head}): upgrade sdgate on this node, or point it at another "
                    "database"
                )
            if current is not None and not outdated:
                raise SchemaMismatch(
                    f"{DATABASE} {describe(engine.url)} has schema {current}, older than this sdgate "
                    f"({head}): run `sdgate db upgrade --database URL` once, then start the nodes"
                )
            config.attributes["connection"] = conn
            command.upgrade(config, "head")
            return SchemaChange(current, head)
    except StorageFull:
        raise
    except (sa.exc.OperationalError, sa.exc.InterfaceError, StorageUnavailable) as exc:
        raise DatabaseUnreachable(_unreachable(engine, exc)) from exc


def ensure_schema(engine: sa.Engine) -> SchemaChange:
    """The start-up check of every process that opens the store: SQLite is upgraded in place,
    PostgreSQL only when empty (its upgrades are ``sdgate db upgrade``); see the module docstring."""
    return upgrade_schema(engine, outdated=engine.dialect.name == "sqlite")


def _unreachable(engine: sa.Engine, exc: BaseException) -> str:
    if isinstance(exc, StorageUnavailable) and isinstance(exc.__cause__, sa.exc.DBAPIError):
        exc = exc.__cause__  # the driver's own words, not "could not reach" twice
    cause = exc.orig if isinstance(exc, sa.exc.DBAPIError) and exc.orig is not None else exc
    detail = " ".join(str(cause).split()) or type(cause).__name__
    return f"could not reach {DATABASE} at {describe(engine.url)}: {detail}"
