"""The uploads table: which stored images a client uploaded, who did, and when (retention's clock).

An image is stored once by content hash, so uploading the same bytes again records nothing new but
restarts its clock: retention deletes an upload no job uses once it is older than the TTL
(``sdgate.jobs.retention``).

    uploads = Uploads(database)
    uploads.record(image_id, owner="alice", content_type="image/png", size=1234)
"""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from sdgate.jobs.database import transaction
from sdgate.jobs.schema import uploads as uploads_table


class Uploads:
    def __init__(self, database: sa.Engine) -> None:
        self._db = database

    def record(self, image_id: str, *, owner: str | None, content_type: str, size: int,
               now: datetime | None = None) -> None:
        """Records an upload of ``image_id``; one already recorded keeps its first owner and gets
        ``now`` as its time."""
        now = now or datetime.now(UTC)
        with transaction(self._db, write=True) as conn:
            # One statement, so two nodes recording the same bytes at once cannot both insert
            # (PostgreSQL runs at READ COMMITTED; SQLite's write lock made a read-then-write safe).
            insert = pg_insert if conn.dialect.name == "postgresql" else sqlite_insert
            conn.execute(
                insert(uploads_table)
                .values(image_id=image_id, owner=owner, content_type=content_type, size=size, created_at=now)
                .on_conflict_do_update(index_elements=[uploads_table.c.image_id], set_={"created_at": now})
            )
