"""Images reserved for a job at submit, so the ones it did not make are given back when it ends.

Revision ID: 0010_reserved_images
Revises: 0009_comfy_files
Create Date: 2026-12-05 11:00:00

``jobs.reserved_images`` is how many of its owner's images per day the submit reserved
(``daily_usage``, migration 0006), ``jobs.reserved_day`` the UTC day they count on (NULL with 0:
nothing reserved, as for every job queued before this migration). When the job ends with fewer
images than reserved (failed, cancelled, interrupted, skipped), the store gives the difference back
to that day's count (``usage.refund_unused``).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010_reserved_images"
down_revision: str | None = "0009_comfy_files"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("jobs", sa.Column("reserved_images", sa.Integer, nullable=False,
                                    server_default=sa.text("0")))
    op.add_column("jobs", sa.Column("reserved_day", sa.String(10), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("reserved_day")
        batch.drop_column("reserved_images")
