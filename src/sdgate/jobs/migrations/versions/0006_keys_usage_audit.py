"""API keys, per-principal rate buckets and daily usage, the audit log, every uploader of an image,
per-principal A1111 options.

Revision ID: 0006_keys_usage_audit
Revises: 0005_outbox_tx_fence
Create Date: 2026-12-05 00:00:00

New tables only: a server that has no key yet keeps working as before (``--auth`` auto turns keys
on once one exists).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "0006_keys_usage_audit"
down_revision: str | None = "0005_outbox_tx_fence"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _json() -> sa.types.TypeEngine[Any]:
    return sa.JSON().with_variant(JSONB(), "postgresql")


def _when() -> sa.DateTime:
    return sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "api_keys",
        sa.Column("id", sa.String(40), nullable=False),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("prefix", sa.String(32), nullable=False),
        sa.Column("secret_hash", sa.String(64), nullable=False),
        sa.Column("scopes", _json(), nullable=False),
        sa.Column("limits", _json(), nullable=False),
        sa.Column("created_at", _when(), nullable=False),
        sa.Column("expires_at", _when(), nullable=True),
        sa.Column("revoked_at", _when(), nullable=True),
        sa.Column("rotated_at", _when(), nullable=True),
        sa.Column("last_used_at", _when(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_api_keys"),
        sa.UniqueConstraint("prefix", name="uq_api_keys_prefix"),
    )
    op.create_index("ix_api_keys_name", "api_keys", ["name"])
    op.create_table(
        "rate_buckets",
        sa.Column("principal", sa.String(255), nullable=False),
        sa.Column("tokens", sa.Float(), nullable=False),
        sa.Column("updated_at", _when(), nullable=False),
        sa.PrimaryKeyConstraint("principal", name="pk_rate_buckets"),
    )
    op.create_table(
        "daily_usage",
        sa.Column("principal", sa.String(255), nullable=False),
        sa.Column("day", sa.String(10), nullable=False),
        sa.Column("images", sa.Integer(), nullable=False),
        sa.Column("gpu_seconds", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("principal", "day", name="pk_daily_usage"),
    )
    seq = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
    op.create_table(
        "audit_log",
        sa.Column("seq", seq, nullable=False, autoincrement=True),
        sa.Column("at", _when(), nullable=False),
        sa.Column("key_id", sa.String(40), nullable=True),
        sa.Column("principal", sa.String(255), nullable=True),
        sa.Column("dialect", sa.String(32), nullable=True),
        sa.Column("method", sa.String(16), nullable=False),
        sa.Column("route", sa.String(255), nullable=False),
        sa.Column("status", sa.Integer(), nullable=False),
        sa.Column("job_id", sa.String(40), nullable=True),
        sa.Column("images", sa.Integer(), nullable=True),
        sa.Column("gpu_seconds", sa.Float(), nullable=True),
        sa.Column("filtered", sa.Boolean(), nullable=True),
        sa.Column("prompt", sa.Text(), nullable=True),
        sa.Column("request_id", sa.String(64), nullable=True),
        sa.PrimaryKeyConstraint("seq", name="pk_audit_log"),
    )
    op.create_index("ix_audit_log_key_id_seq", "audit_log", ["key_id", "seq"])
    op.create_index("ix_audit_log_at", "audit_log", ["at"])
    op.create_table(
        "upload_owners",
        sa.Column("image_id", sa.String(40), nullable=False),
        sa.Column("owner", sa.String(255), nullable=False),
        sa.Column("created_at", _when(), nullable=False),
        sa.PrimaryKeyConstraint("image_id", "owner", name="pk_upload_owners"),
    )
    op.execute(
        "INSERT INTO upload_owners (image_id, owner, created_at) "
        "SELECT image_id, owner, created_at FROM uploads WHERE owner IS NOT NULL"
    )
    op.create_table(
        "principal_options",
        sa.Column("principal", sa.String(255), nullable=False),
        sa.Column("options", _json(), nullable=False),
        sa.Column("updated_at", _when(), nullable=False),
        sa.PrimaryKeyConstraint("principal", name="pk_principal_options"),
    )


def downgrade() -> None:
    op.drop_table("principal_options")
    op.drop_table("upload_owners")
    op.drop_index("ix_audit_log_at", table_name="audit_log")
    op.drop_index("ix_audit_log_key_id_seq", table_name="audit_log")
    op.drop_table("audit_log")
    op.drop_table("daily_usage")
    op.drop_table("rate_buckets")
    op.drop_index("ix_api_keys_name", table_name="api_keys")
    op.drop_table("api_keys")
