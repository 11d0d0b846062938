"""The outbox's transaction-id fence on PostgreSQL: ``job_events.tx`` and an index on (tx, seq).

Revision ID: 0005_outbox_tx_fence
Revises: 0004_workers_affinity
Create Date: 2026-12-05 00:00:00

Each row records the transaction that wrote it (``pg_current_xact_id()``), so outbox appends no
longer take turns under one advisory lock: a follower reads ``(tx, seq)`` after its cursor and
below the snapshot's ``xmin`` (every transaction there has ended), and so never skips a row that
commits late (see ``outbox.py``). Rows written before this migration all get the migrating
transaction's id: they sort after nothing a follower can still be waiting for. SQLite is unchanged:
its write lock is global, ``seq`` already follows commit order there.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0005_outbox_tx_fence"
down_revision: str | None = "0004_workers_affinity"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("ALTER TABLE job_events ADD COLUMN tx xid8 NOT NULL DEFAULT pg_current_xact_id()")
    op.create_index("ix_job_events_tx_seq", "job_events", ["tx", "seq"])


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.drop_index("ix_job_events_tx_seq", table_name="job_events")
    op.drop_column("job_events", "tx")
