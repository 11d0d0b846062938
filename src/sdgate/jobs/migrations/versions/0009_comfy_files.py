"""ComfyUI's files and prompts: uploaded files by (owner, type, subfolder, name), and each prompt's
id, job and queue number.

Revision ID: 0009_comfy_files
Revises: 0008_batch_key
Create Date: 2026-12-05 07:30:00

``comfy_files`` maps what a ComfyUI client calls a file (``/upload/image``'s answer, LoadImage's
``image``) to the stored image; ``comfy_prompts`` maps a prompt id (the client's own, when it gave
one) to the job that runs it, numbers the prompts in submission order, and marks those deleted
from ``/history`` (``hidden``: the job and its images stay, for ``/view``, until retention).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009_comfy_files"
down_revision: str | None = "0008_batch_key"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _when() -> sa.DateTime:
    return sa.DateTime(timezone=True)


# SQLite only aliases the rowid (and so auto-increments) for a column typed exactly INTEGER.
_SEQ = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "comfy_files",
        sa.Column("owner", sa.String(255), nullable=False),
        sa.Column("type", sa.String(16), nullable=False),
        sa.Column("subfolder", sa.String(255), nullable=False),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("image_id", sa.String(40), nullable=False),
        sa.Column("width", sa.Integer(), nullable=True),
        sa.Column("height", sa.Integer(), nullable=True),
        sa.Column("created_at", _when(), nullable=False),
        sa.PrimaryKeyConstraint("owner", "type", "subfolder", "name", name="pk_comfy_files"),
    )
    op.create_table(
        "comfy_prompts",
        sa.Column("seq", _SEQ, primary_key=True, autoincrement=True),
        sa.Column("prompt_id", sa.String(64), nullable=False),
        sa.Column("job_id", sa.String(40), nullable=True),
        sa.Column("owner", sa.String(255), nullable=False),
        sa.Column("created_at", _when(), nullable=False),
        sa.Column("hidden", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("seq", name="pk_comfy_prompts"),
        sa.UniqueConstraint("prompt_id", name="uq_comfy_prompts_prompt_id"),
        sa.UniqueConstraint("job_id", name="uq_comfy_prompts_job_id"),
    )
    op.create_index("ix_comfy_prompts_owner_seq", "comfy_prompts", ["owner", "seq"])


def downgrade() -> None:
    op.drop_index("ix_comfy_prompts_owner_seq", table_name="comfy_prompts")
    op.drop_table("comfy_prompts")
    op.drop_table("comfy_files")
