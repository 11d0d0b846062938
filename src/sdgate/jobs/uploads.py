"""The uploads table: which stored images a client uploaded, who did, and when (retention's clock);
and whose an image is.

An image is stored once by content hash, so uploading the same bytes again records nothing new but
restarts its clock: retention deletes an upload no job uses once it is older than the TTL
(``sdgate.jobs.retention``).

An image belongs to whoever uploaded it and to the owner of every job that refers to it (an input
or a result): ``visible_to`` answers that for the image routes and for upload ids named as a job's
input, so one caller cannot read, or reuse as an init image, another's picture by its id.

    uploads = Uploads(database)
    uploads.record(image_id, owner="alice", content_type="image/png", size=1234)
    uploads.visible_to(image_id, "alice", store)   # True: alice uploaded it
"""

from __future__ import annotations

import re
from datetime import UTC, datetime

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from sdgate.core.errors import NotFound
from sdgate.core.jobs import JobStore
from sdgate.jobs.database import transaction
from sdgate.jobs.retention import job_image_ids
from sdgate.jobs.schema import jobs as jobs_table
from sdgate.jobs.schema import upload_owners
from sdgate.jobs.schema import uploads as uploads_table

_IMAGE_ID = re.compile(r"img_[0-9a-f]{24}")
# Jobs of the owner whose stored text names the image, read to check it exactly (the text match
# alone would let a prompt that quotes another's image id claim it).
_CANDIDATES = 50


class Uploads:
    def __init__(self, database: sa.Engine) -> None:
        self._db = database

    def record(self, image_id: str, *, owner: str | None, content_type: str, size: int,
               now: datetime | None = None) -> None:
        """Records an upload of ``image_id`` by ``owner``; one already recorded gets ``now`` as its
        time and ``owner`` as one more of its uploaders (the same bytes uploaded by two callers)."""
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
            if owner is not None:
                conn.execute(
                    insert(upload_owners)
                    .values(image_id=image_id, owner=owner, created_at=now)
                    .on_conflict_do_nothing(index_elements=[upload_owners.c.image_id, upload_owners.c.owner])
                )

    def visible_to(self, image_id: str, owner: str | None, store: JobStore) -> bool:
        """Whether ``owner`` uploaded ``image_id`` or one of its jobs refers to it (as an input or
        a result). Callers let admins through without asking."""
        if owner is None or not _IMAGE_ID.fullmatch(image_id) or "\x00" in owner:
            return False
        with transaction(self._db, write=False) as conn:
            uploaded = conn.execute(
                sa.select(upload_owners.c.image_id).where(
                    upload_owners.c.image_id == image_id, upload_owners.c.owner == owner
                )
            ).first()
            if uploaded is not None:
                return True
            pattern = f"%{image_id}%"  # ids are [a-z0-9_] only: nothing to escape
            candidates = conn.execute(
                sa.select(jobs_table.c.id)
                .where(
                    jobs_table.c.owner == owner,
                    sa.or_(
                        sa.cast(jobs_table.c.result, sa.Text).like(pattern),
                        sa.cast(jobs_table.c.request, sa.Text).like(pattern),
                    ),
                )
                .order_by(jobs_table.c.seq.desc())
                .limit(_CANDIDATES)
            ).scalars().all()
        for job_id in candidates:
            try:
                job = store.get(job_id)
            except NotFound:  # deleted meanwhile
                continue
            if image_id in job_image_ids(job):
                return True
        return False
