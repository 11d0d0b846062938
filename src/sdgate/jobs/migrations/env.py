"""Alembic environment for the jobs database.

At run time ``sdgate.jobs.database.upgrade_schema`` hands in an open connection (already inside a
write transaction). From the command line (``alembic -c alembic.ini upgrade head`` at the repo
root, or ``revision --autogenerate``) the URL comes from ``-x url=...`` or the config.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context

from sdgate.jobs.database import create_db_engine, transaction
from sdgate.jobs.schema import metadata


def _run(connection: sa.Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        render_as_batch=connection.dialect.name == "sqlite",  # SQLite cannot ALTER most things
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def _url() -> str:
    url = context.get_x_argument(as_dictionary=True).get("url") or context.config.get_main_option(
        "sqlalchemy.url"
    )
    if not url:
        raise RuntimeError("give a database URL: alembic -x url=sqlite:///path/to/sdgate.db ...")
    return url


def _run_online() -> None:
    connection = context.config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    engine = create_db_engine(_url())
    try:
        with transaction(engine, write=True) as conn:
            _run(conn)
    finally:
        engine.dispose()


def _run_offline() -> None:
    context.configure(
        url=_url(),
        target_metadata=metadata,
        literal_binds=True,
    )
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    _run_offline()
else:
    _run_online()
