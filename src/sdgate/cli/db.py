"""``sdgate db``: the job database's schema.

    sdgate db upgrade [--database URL | --data-dir DIR]   # bring it to this sdgate's newest migration
    sdgate db current [--database URL | --data-dir DIR]   # its migration, and this code's

A node checks the schema at start: SQLite (embedded mode) is upgraded in place; PostgreSQL is
created when empty but an older schema is refused until an operator runs ``sdgate db upgrade``
once (several nodes share it); a schema newer than the code is refused everywhere
(``sdgate.jobs.database.ensure_schema``). Safe to run while nodes run and from several shells at
once (an advisory lock on PostgreSQL, the write lock on SQLite).

Exit codes: 0 done, 1 the database could not be reached or its schema is newer than this code,
2 a URL sdgate does not speak. SQLAlchemy and Alembic are imported inside the commands, so the
SDK-only install keeps a light ``sdgate``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, NoReturn

import typer
from rich.console import Console

app = typer.Typer(help="The job database: its schema migrations.", no_args_is_help=True)
_err = Console(stderr=True)

DatabaseOpt = Annotated[
    str | None,
    typer.Option(
        "--database",
        help="sqlite:///path/sdgate.db or postgresql://user:pass@host/db. [default: <data-dir>/sdgate.db] "
        "[env: SDGATE_DATABASE]",
    ),
]
DataDirOpt = Annotated[
    Path | None, typer.Option("--data-dir", help="Where the default SQLite database lives.")
]


def _fail(message: str, *, code: int, kind: str) -> NoReturn:
    _err.print(f"[red]{kind}[/red]: {message}", highlight=False, soft_wrap=True, markup=True)
    raise typer.Exit(code)


def _url(database: str | None, data_dir: Path | None) -> str:
    from pydantic import ValidationError

    from sdgate.settings import load_settings

    overrides: dict[str, object] = {}
    if database is not None:
        overrides["database"] = database
    if data_dir is not None:
        overrides["data_dir"] = data_dir
    try:
        url = load_settings(**overrides).database_url
    except ValidationError as exc:
        _fail(exc.errors()[0]["msg"], code=2, kind="UsageError")
    import sqlalchemy as sa

    try:
        backend = sa.make_url(url).get_backend_name()
    except sa.exc.ArgumentError:
        _fail(f"--database: {url!r} is not a database URL", code=2, kind="UsageError")
    if backend not in ("sqlite", "postgresql"):
        _fail(f"--database: {backend!r} is not supported (sqlite or postgresql)", code=2, kind="UsageError")
    return url


@app.command()
def upgrade(database: DatabaseOpt = None, data_dir: DataDirOpt = None) -> None:
    """Bring the job database to this sdgate's newest migration (creating it when empty)."""
    from sdgate.core.errors import StorageUnavailable
    from sdgate.jobs.database import (
        DatabaseUnreachable,
        SchemaMismatch,
        create_db_engine,
        describe,
        upgrade_schema,
    )

    url = _url(database, data_dir)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    engine = create_db_engine(url)
    try:
        change = upgrade_schema(engine)
    except SchemaMismatch as exc:
        _fail(str(exc), code=1, kind="SchemaMismatch")
    except (DatabaseUnreachable, StorageUnavailable) as exc:
        _fail(str(exc), code=1, kind=type(exc).__name__)
    finally:
        engine.dispose()
    where = describe(url)
    if not change.changed:
        typer.echo(f"{where}: already at {change.after}")
    else:
        typer.echo(f"{where}: upgraded from {change.before or 'an empty database'} to {change.after}")


@app.command()
def current(database: DatabaseOpt = None, data_dir: DataDirOpt = None) -> None:
    """Print the job database's migration and this sdgate's newest."""
    import sqlalchemy as sa

    from sdgate.jobs.database import create_db_engine, describe, head_revision, schema_revision

    url = _url(database, data_dir)
    engine = create_db_engine(url)
    try:
        with engine.connect() as conn:
            revision = schema_revision(conn)
    except sa.exc.DBAPIError as exc:
        detail = " ".join(str(exc.orig or exc).split())
        _fail(f"could not reach the job database at {describe(url)}: {detail}", code=1,
              kind="DatabaseUnreachable")
    finally:
        engine.dispose()
    head = head_revision()
    state = "up to date" if revision == head else "empty" if revision is None else "differs"
    typer.echo(f"{describe(url)}: {revision or 'no schema'} (this sdgate: {head}; {state})")
