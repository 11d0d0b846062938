"""Fair scheduling: each job's turn within its priority, and the claim indexes ordered by it.

Revision ID: 0007_fair_turns
Revises: 0006_keys_usage_audit
Create Date: 2026-12-05 04:00:00

A claim takes, within the highest priority, the lowest ``turn`` first, then FIFO (``seq``); a submit
gives a job the turn after its owner's last queued one (or the queue's current turn), so owners
alternate (``store.py``). Jobs queued before this migration all get turn 0: plain FIFO among them.
``ix_jobs_queued_owner_turn`` is partial (queued rows only) on both databases.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007_fair_turns"
down_revision: str | None = "0006_keys_usage_audit"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_QUEUED = sa.text("state = 'queued'")


def upgrade() -> None:
    # A plain ADD COLUMN on both (SQLite takes NOT NULL with a default): no table copy.
    op.add_column("jobs", sa.Column("turn", sa.BigInteger(), nullable=False, server_default=sa.text("0")))
    op.drop_index("ix_jobs_claim", table_name="jobs")
    op.drop_index("ix_jobs_claim_model", table_name="jobs")
    op.create_index("ix_jobs_claim", "jobs", ["state", sa.text("priority DESC"), "turn", "seq"])
    op.create_index("ix_jobs_claim_model", "jobs",
                    ["state", sa.text("priority DESC"), "model", "turn", "seq"])
    op.create_index("ix_jobs_queued_owner_turn", "jobs", ["owner", "priority", "turn"],
                    postgresql_where=_QUEUED, sqlite_where=_QUEUED)


def downgrade() -> None:
    op.drop_index("ix_jobs_queued_owner_turn", table_name="jobs")
    op.drop_index("ix_jobs_claim_model", table_name="jobs")
    op.drop_index("ix_jobs_claim", table_name="jobs")
    op.create_index("ix_jobs_claim", "jobs", ["state", sa.text("priority DESC"), "seq"])
    op.create_index("ix_jobs_claim_model", "jobs", ["state", sa.text("priority DESC"), "model", "seq"])
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("turn")
