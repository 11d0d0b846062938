"""The worker registry (``workers``) and the job's model as a column, for model affinity in claims.

Revision ID: 0004_workers_affinity
Revises: 0003_leases_outbox
Create Date: 2026-12-12 00:00:00

Jobs queued before this migration have no ``model``: they are claimed in plain FIFO order (no
backfill; the queue drains them soon enough).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "0004_workers_affinity"
down_revision: str | None = "0003_leases_outbox"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _json() -> sa.types.TypeEngine[Any]:
    return sa.JSON().with_variant(JSONB(), "postgresql")


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("model", sa.String(255), nullable=True))
    op.create_index("ix_jobs_claim_model", "jobs", ["state", sa.text("priority DESC"), "model", "seq"])
    op.create_table(
        "workers",
        sa.Column("id", sa.String(255), nullable=False),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("device", sa.String(64), nullable=True),
        sa.Column("engine", sa.String(64), nullable=True),
        sa.Column("models", _json(), nullable=False),
        sa.Column("free_memory_bytes", sa.BigInteger(), nullable=True),
        sa.Column("current_job_id", sa.String(40), nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_seen", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_workers"),
    )
    op.create_index("ix_workers_last_seen", "workers", ["last_seen"])


def downgrade() -> None:
    op.drop_index("ix_workers_last_seen", table_name="workers")
    op.drop_table("workers")
    op.drop_index("ix_jobs_claim_model", table_name="jobs")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("model")
