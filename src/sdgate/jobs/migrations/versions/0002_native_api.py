"""Tables of the native job API: idempotency keys, the job event log, webhooks, uploads.

Revision ID: 0002_native_api
Revises: 0001_jobs
Create Date: 2026-11-22 00:00:00
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "0002_native_api"
down_revision: str | None = "0001_jobs"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _json() -> sa.types.TypeEngine[Any]:
    return sa.JSON().with_variant(JSONB(), "postgresql")


def _seq() -> sa.types.TypeEngine[Any]:
    return sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _when(name: str, nullable: bool) -> sa.Column[Any]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "idempotency_keys",
        sa.Column("scope", sa.String(255), nullable=False),
        sa.Column("key", sa.String(255), nullable=False),
        sa.Column("body_hash", sa.String(64), nullable=False),
        sa.Column("job_id", sa.String(40), nullable=True),
        _when("created_at", False),
        _when("expires_at", False),
        sa.PrimaryKeyConstraint("scope", "key", name="pk_idempotency_keys"),
    )
    op.create_index("ix_idempotency_keys_expires_at", "idempotency_keys", ["expires_at"])
    op.create_table(
        "job_events",
        sa.Column("seq", _seq(), autoincrement=True, nullable=False),
        sa.Column("job_id", sa.String(40), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("data", _json(), nullable=False),
        _when("created_at", False),
        sa.PrimaryKeyConstraint("seq", name="pk_job_events"),
    )
    op.create_index("ix_job_events_job_id_seq", "job_events", ["job_id", "seq"])
    op.create_table(
        "webhooks",
        sa.Column("job_id", sa.String(40), nullable=False),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        _when("next_attempt_at", True),
        sa.Column("last_status", sa.Integer(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("attempt_log", _json(), nullable=False),
        _when("created_at", False),
        _when("delivered_at", True),
        sa.PrimaryKeyConstraint("job_id", name="pk_webhooks"),
    )
    op.create_index("ix_webhooks_state_next_attempt_at", "webhooks", ["state", "next_attempt_at"])
    op.create_table(
        "uploads",
        sa.Column("image_id", sa.String(40), nullable=False),
        sa.Column("owner", sa.String(255), nullable=True),
        sa.Column("content_type", sa.String(32), nullable=False),
        sa.Column("size", sa.Integer(), nullable=False),
        _when("created_at", False),
        sa.PrimaryKeyConstraint("image_id", name="pk_uploads"),
    )
    op.create_index("ix_uploads_created_at", "uploads", ["created_at"])


def downgrade() -> None:
    op.drop_index("ix_uploads_created_at", table_name="uploads")
    op.drop_table("uploads")
    op.drop_index("ix_webhooks_state_next_attempt_at", table_name="webhooks")
    op.drop_table("webhooks")
    op.drop_index("ix_job_events_job_id_seq", table_name="job_events")
    op.drop_table("job_events")
    op.drop_index("ix_idempotency_keys_expires_at", table_name="idempotency_keys")
    op.drop_table("idempotency_keys")
