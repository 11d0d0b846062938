"""Storage faults injected where no real part here shows them (a full disk on demand)."""

from __future__ import annotations

import sqlite3
from typing import Any

import sqlalchemy as sa


class DiskFull:
    """While ``on``, every write statement on ``engine`` fails as SQLite's does on a full disk: raised
    from the DBAPI call, so SQLAlchemy wraps it exactly as it wraps the real error."""

    def __init__(self, engine: sa.Engine, message: str = "database or disk is full") -> None:
        self.on = False
        self.message = message
        sa.event.listen(engine, "before_cursor_execute", self._check)

    def _check(self, _conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        words = statement.lstrip().split(None, 1)
        if self.on and words and words[0].upper() in ("INSERT", "UPDATE", "DELETE"):
            raise sqlite3.OperationalError(self.message)
