"""The ``principal_options`` table: each principal's own A1111 option overrides (a Basic user's, an
API key's), over the server's defaults, which the admin sets (``server/dialects/a1111/options.py``).

Kept in the job database, so every API node of a cluster reads the same overrides; a principal's
row is one JSON object of option keys to values, already checked and normalised by the A1111
dialect (this module stores what it is given).

    options = PrincipalOptions(database)
    options.get("alice")                                  # {} until alice saves one
    options.update("alice", {"CLIP_stop_at_last_layers": 2})   # merged into alice's overrides
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from sdgate.jobs.database import transaction
from sdgate.jobs.schema import principal_options


class PrincipalOptions:
    def __init__(self, database: sa.Engine) -> None:
        self._db = database

    def get(self, principal: str) -> dict[str, Any]:
        """``principal``'s overrides; ``{}`` when it has none."""
        if "\x00" in principal:  # PostgreSQL's text cannot even compare one
            return {}
        query = sa.select(principal_options.c.options).where(principal_options.c.principal == principal)
        with transaction(self._db, write=False) as conn:
            stored = conn.execute(query).scalar_one_or_none()
        return dict(stored) if isinstance(stored, dict) else {}

    def update(self, principal: str, changes: dict[str, Any], *,
               now: datetime | None = None) -> dict[str, Any]:
        """Merges ``changes`` into ``principal``'s overrides; returns them as saved. Read and write
        happen in one transaction holding the row, so two nodes saving different keys for the same
        principal at once both keep theirs."""
        now = now or datetime.now(UTC)
        with transaction(self._db, write=True) as conn:
            query = sa.select(principal_options.c.options).where(principal_options.c.principal == principal)
            if conn.dialect.name == "postgresql":
                query = query.with_for_update()
            row = conn.execute(query).one_or_none()
            merged = {**(dict(row.options) if row is not None and isinstance(row.options, dict) else {}),
                      **changes}
            if row is None:
                # Two first saves at once: the later one overwrites rather than failing on the
                # primary key (no row existed to lock).
                insert = pg_insert if conn.dialect.name == "postgresql" else sqlite_insert
                conn.execute(
                    insert(principal_options)
                    .values(principal=principal, options=merged, updated_at=now)
                    .on_conflict_do_update(index_elements=[principal_options.c.principal],
                                           set_={"options": merged, "updated_at": now})
                )
            else:
                conn.execute(
                    sa.update(principal_options)
                    .where(principal_options.c.principal == principal)
                    .values(options=merged, updated_at=now)
                )
        return merged

    def clear(self, principal: str) -> None:
        """Drops ``principal``'s overrides (it sees the server's defaults again)."""
        with transaction(self._db, write=True) as conn:
            conn.execute(sa.delete(principal_options).where(principal_options.c.principal == principal))

