"""Leases on running jobs, the job outbox (job snapshots in ``job_events``) and progress previews.

Revision ID: 0003_leases_outbox
Revises: 0002_native_api
Create Date: 2026-12-04 00:00:00
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "0003_leases_outbox"
down_revision: str | None = "0002_native_api"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _json() -> sa.types.TypeEngine[Any]:
    return sa.JSON().with_variant(JSONB(), "postgresql")


def upgrade() -> None:
    # A job left running by a version without leases has none: recovery treats it as expired.
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=True))
    op.create_index("ix_jobs_state_lease_expires_at", "jobs", ["state", "lease_expires_at"])
    with op.batch_alter_table("job_events") as batch:
        batch.add_column(sa.Column("job", _json(), nullable=True))
        batch.add_column(sa.Column("origin", sa.String(32), nullable=True))
    op.create_table(
        "job_previews",
        sa.Column("job_id", sa.String(40), nullable=False),
        sa.Column("iteration", sa.Integer(), nullable=False),
        sa.Column("step", sa.Integer(), nullable=False),
        sa.Column("png", sa.LargeBinary(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("job_id", name="pk_job_previews"),
    )


def downgrade() -> None:
    op.drop_table("job_previews")
    with op.batch_alter_table("job_events") as batch:
        batch.drop_column("origin")
        batch.drop_column("job")
    op.drop_index("ix_jobs_state_lease_expires_at", table_name="jobs")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("lease_expires_at")
