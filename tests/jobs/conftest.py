"""The job-store fixtures, over both databases.

``db_url`` (and so ``store``) is parametrized: ``[sqlite]``, a file in ``tmp_path``, and
``[postgresql]``, a fresh database on the server ``scripts/services.sh start`` runs, so every test
that takes them runs against both. The PostgreSQL side is marked ``cluster``. Each PostgreSQL test
gets its own database, copied from a template migrated once per session (``CREATE DATABASE ...
TEMPLATE``: tens of milliseconds) and dropped after the test; ``empty_db_url`` is one with no schema
(for the migration tests). A module whose tests are about SQLite itself (a full disk, WAL) overrides
``db_url`` with ``sqlite_url``.

The server: ``SDGATE_TEST_DATABASE_URL`` (what ``source $SDGATE_SERVICES_DIR/env`` sets), else the
script's default address. When it does not answer, the PostgreSQL tests FAIL, naming
``scripts/services.sh start``, in CI (``CI`` set) or with ``SDGATE_REQUIRE_SERVICES=1``; on a
developer's machine otherwise they are skipped with the same message, so ``pytest`` works without
PostgreSQL. ``pytest -m "not cluster"`` leaves them out on purpose.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import sqlalchemy as sa

from sdgate.core.jobs import Job, JobEventKind
from sdgate.jobs.database import create_db_engine, upgrade_schema
from sdgate.jobs.events import JobEvents
from sdgate.jobs.store import SqlJobStore

DEFAULT_PG_URL = "postgresql+psycopg://sdgate@127.0.0.1:55432/sdgate_test"
DATABASES = ["sqlite", pytest.param("postgresql", marks=pytest.mark.cluster)]


def services_required() -> bool:
    return bool(os.environ.get("CI")) or os.environ.get("SDGATE_REQUIRE_SERVICES") == "1"


@dataclass
class PgServer:
    """A PostgreSQL server the tests may create and drop databases on."""

    url: sa.URL  # the database services.sh made: where the admin connection goes
    template: str  # a database at the newest migration, copied for each test

    @contextmanager
    def database(self, *, migrated: bool = True) -> Iterator[str]:
        name = f"sdgate_t_{uuid.uuid4().hex[:16]}"
        template = self.template if migrated else "template0"
        self._admin(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
        try:
            yield self.url.set(database=name).render_as_string(hide_password=False)
        finally:
            self._admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def _admin(self, sql: str) -> None:
        engine = sa.create_engine(self.url, isolation_level="AUTOCOMMIT", poolclass=sa.NullPool)
        try:
            with engine.connect() as conn:
                conn.exec_driver_sql(sql)
        finally:
            engine.dispose()


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    url = sa.make_url(os.environ.get("SDGATE_TEST_DATABASE_URL") or DEFAULT_PG_URL)
    if url.drivername == "postgresql":
        url = url.set(drivername="postgresql+psycopg")
    probe = sa.create_engine(url, poolclass=sa.NullPool, connect_args={"connect_timeout": 3})
    try:
        with probe.connect() as conn:
            conn.exec_driver_sql("SELECT 1")
    except Exception as exc:  # noqa: BLE001 - any failure to connect means "no server"
        detail = " ".join(str(getattr(exc, "orig", exc) or exc).split())[:300]
        message = (
            f"no PostgreSQL at {url.render_as_string(hide_password=True)} ({detail}): run "
            "`scripts/services.sh start` and `source /tmp/sdgate-services/env` (see tests/jobs/conftest.py)"
        )
        if services_required():
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    finally:
        probe.dispose()
    server = PgServer(url=url, template=f"sdgate_tpl_{uuid.uuid4().hex[:12]}")
    server._admin(f'CREATE DATABASE "{server.template}" TEMPLATE template0')
    try:
        engine = create_db_engine(url.set(database=server.template))
        try:
            upgrade_schema(engine)
        finally:
            engine.dispose()
        yield server
    finally:
        server._admin(f'DROP DATABASE IF EXISTS "{server.template}" WITH (FORCE)')


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'jobs.db'}"


@pytest.fixture(params=DATABASES)
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A SQLite file (made and migrated by the first store that opens it), or a fresh PostgreSQL
    database already at the newest migration."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'jobs.db'}"
        return
    server: PgServer = request.getfixturevalue("pg_server")
    with server.database() as url:
        yield url


@pytest.fixture(params=DATABASES)
def empty_db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A database with no schema at all."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'fresh' / 'db.sqlite'}"
        return
    server: PgServer = request.getfixturevalue("pg_server")
    with server.database(migrated=False) as url:
        yield url


@pytest.fixture
def events() -> JobEvents:
    return JobEvents()


@pytest.fixture
def store(db_url: str, events: JobEvents) -> Iterator[SqlJobStore]:
    with SqlJobStore(db_url, events=events) as s:
        yield s


@pytest.fixture
def published(events: JobEvents) -> list[tuple[JobEventKind, Job]]:
    """Every event the store publishes, in order."""
    seen: list[tuple[JobEventKind, Job]] = []
    events.add_listener(lambda kind, job: seen.append((kind, job)))
    return seen
