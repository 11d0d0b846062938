"""Cross-request batching: each job's batch key, and the index a batched claim reads.

Revision ID: 0008_batch_key
Revises: 0007_fair_turns
Create Date: 2026-12-05 07:00:00

``jobs.batch_key`` is ``core.batching.batch_key(request)`` computed at submit (NULL: the job runs
alone; every job queued before this migration). A worker that batches claims the head of the queue
and then queued jobs of the same priority and key (``store.claim_group(..., batched=True)``), by
``ix_jobs_queued_batch`` (partial: queued rows only, on both databases).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008_batch_key"
down_revision: str | None = "0007_fair_turns"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_QUEUED = sa.text("state = 'queued'")


def upgrade() -> None:
    op.add_column("jobs", sa.Column("batch_key", sa.String(64), nullable=True))
    op.create_index("ix_jobs_queued_batch", "jobs", ["priority", "batch_key", "turn", "seq"],
                    postgresql_where=_QUEUED, sqlite_where=_QUEUED)


def downgrade() -> None:
    op.drop_index("ix_jobs_queued_batch", table_name="jobs")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("batch_key")
