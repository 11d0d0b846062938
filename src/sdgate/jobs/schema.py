"""The ``jobs`` table as SQLAlchemy Core metadata: what the store queries and what Alembic
autogenerate compares against. Schema changes go through a new file in ``migrations/versions``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Dialect


class UTCDateTime(sa.TypeDecorator[datetime]):
    """Timezone-aware UTC in, timezone-aware UTC out, also on SQLite (which stores naive text)."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


# JSON text on SQLite, JSONB on PostgreSQL; Python None is SQL NULL. Seeds (up to 2**64-1) live only
# inside these documents, never in a signed 64-bit INTEGER column.
JsonDoc: sa.types.TypeEngine[Any] = sa.JSON(none_as_null=True).with_variant(
    JSONB(none_as_null=True), "postgresql"
)
# SQLite only aliases the rowid (and so auto-increments) for a column typed exactly INTEGER.
SeqInt: sa.types.TypeEngine[int] = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

metadata = sa.MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

jobs = sa.Table(
    "jobs",
    metadata,
    # Monotonic insertion order: FIFO ties within a priority are broken by this, never by clocks.
    sa.Column("seq", SeqInt, primary_key=True, autoincrement=True),
    sa.Column("id", sa.String(40), nullable=False, unique=True),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("dialect", sa.String(32), nullable=False),
    sa.Column("owner", sa.String(255), nullable=True),
    sa.Column("priority", sa.Integer, nullable=False),
    sa.Column("request", JsonDoc, nullable=False),
    sa.Column("meta", JsonDoc, nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("started_at", UTCDateTime, nullable=True),
    sa.Column("finished_at", UTCDateTime, nullable=True),
    sa.Column("updated_at", UTCDateTime, nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("worker_id", sa.String(255), nullable=True),
    sa.Column("control", sa.String(16), nullable=True),
    sa.Column("progress", JsonDoc, nullable=True),
    sa.Column("result", JsonDoc, nullable=True),
    sa.Column("error", JsonDoc, nullable=True),
    # While running: until when the claiming worker holds the job (migration 0003). The worker renews
    # it; once it is in the past, any process may re-queue the job.
    sa.Column("lease_expires_at", UTCDateTime, nullable=True),
    # The model a generation names (migration 0004), copied from ``request`` at submit so a claim can
    # prefer the jobs of a worker's loaded models; None: the default model, an extras job, or a job
    # queued before 0004.
    sa.Column("model", sa.String(255), nullable=True),
    # Fair scheduling (migration 0007): the owner's turn within its priority, given at submit (see
    # ``store.py``). A claim takes the lowest turn first, then FIFO, so owners alternate.
    sa.Column("turn", sa.BigInteger, nullable=False, server_default=sa.text("0")),
    # Cross-request batching (migration 0008): ``core.batching.batch_key(request)``, given at submit;
    # None: the job runs alone. A batched claim takes queued jobs of the head's priority and key.
    sa.Column("batch_key", sa.String(64), nullable=True),
    # Images per day reserved at submit (migration 0010) and the UTC day they count on: what the job
    # does not make is given back when it ends (``usage.refund_unused``).
    sa.Column("reserved_images", sa.Integer, nullable=False, server_default=sa.text("0")),
    sa.Column("reserved_day", sa.String(10), nullable=True),
    # Listing a caller's jobs newest first.
    sa.Index("ix_jobs_owner_seq", "owner", "seq"),
    sa.Index("ix_jobs_dialect_seq", "dialect", "seq"),
)
# The claim query and position(): WHERE state = 'queued' ORDER BY priority DESC, turn, seq.
sa.Index("ix_jobs_claim", jobs.c.state, jobs.c.priority.desc(), jobs.c.turn, jobs.c.seq)
# A claim with model affinity: WHERE state = 'queued' AND priority = p AND model IN (...)
# ORDER BY turn, seq.
sa.Index("ix_jobs_claim_model", jobs.c.state, jobs.c.priority.desc(), jobs.c.model, jobs.c.turn, jobs.c.seq)
# A submit's turn: the owner's last queued turn at its priority. Queued rows only, so an owner's
# finished history costs nothing.
sa.Index(
    "ix_jobs_queued_owner_turn",
    jobs.c.owner,
    jobs.c.priority,
    jobs.c.turn,
    postgresql_where=jobs.c.state == "queued",
    sqlite_where=jobs.c.state == "queued",
)
# A batched claim's mates: WHERE state = 'queued' AND priority = p AND batch_key = k ORDER BY turn, seq.
sa.Index(
    "ix_jobs_queued_batch",
    jobs.c.priority,
    jobs.c.batch_key,
    jobs.c.turn,
    jobs.c.seq,
    postgresql_where=jobs.c.state == "queued",
    sqlite_where=jobs.c.state == "queued",
)
# Recovery: WHERE state = 'running' AND lease_expires_at < now.
sa.Index("ix_jobs_state_lease_expires_at", jobs.c.state, jobs.c.lease_expires_at)

# -- the native job API (migration 0002) -----------------------------------------------------------

# One row per (caller, Idempotency-Key): the primary key is what makes concurrent duplicates atomic.
idempotency_keys = sa.Table(
    "idempotency_keys",
    metadata,
    sa.Column("scope", sa.String(255), nullable=False),  # the caller ("" without auth)
    sa.Column("key", sa.String(255), nullable=False),
    sa.Column("body_hash", sa.String(64), nullable=False),
    sa.Column("job_id", sa.String(40), nullable=True),  # None while the first request submits
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("expires_at", UTCDateTime, nullable=False),
    sa.PrimaryKeyConstraint("scope", "key"),
    sa.Index("ix_idempotency_keys_expires_at", "expires_at"),
)

# The job outbox: one row per state change or progress, written in the transaction that makes the
# change (see ``outbox.py``); ``seq`` orders them and is the SSE ``Last-Event-ID``. Since migration
# 0003 a row carries the job as it was (``job``) and the process that wrote it (``origin``); older
# rows carry only ``data``, already rendered for the native API.
job_events = sa.Table(
    "job_events",
    metadata,
    sa.Column("seq", SeqInt, primary_key=True, autoincrement=True),
    sa.Column("job_id", sa.String(40), nullable=False),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("data", JsonDoc, nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("job", JsonDoc, nullable=True),
    sa.Column("origin", sa.String(32), nullable=True),
    sa.Index("ix_job_events_job_id_seq", "job_id", "seq"),
)

# PostgreSQL only (migration 0005), so not in ``metadata``: ``job_events.tx xid8 NOT NULL DEFAULT
# pg_current_xact_id()``, the transaction that wrote the row, and the index the outbox's fence reads
# by (``outbox.read_after``). SQLite has neither: its write lock is global, ``seq`` is commit order.
POSTGRESQL_ONLY = frozenset({("column", "job_events", "tx"), ("index", "job_events", "ix_job_events_tx_seq")})

# The latest progress preview of a running job (PNG), written by its worker, read by any process.
job_previews = sa.Table(
    "job_previews",
    metadata,
    sa.Column("job_id", sa.String(40), primary_key=True),
    sa.Column("iteration", sa.Integer, nullable=False),
    sa.Column("step", sa.Integer, nullable=False),
    sa.Column("png", sa.LargeBinary, nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
)

# One callback per job, delivered once the job is terminal; every attempt is kept in ``attempt_log``.
webhooks = sa.Table(
    "webhooks",
    metadata,
    sa.Column("job_id", sa.String(40), primary_key=True),
    sa.Column("url", sa.Text, nullable=False),
    sa.Column("state", sa.String(16), nullable=False),  # pending | delivered | failed
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("next_attempt_at", UTCDateTime, nullable=True),
    sa.Column("last_status", sa.Integer, nullable=True),
    sa.Column("last_error", sa.Text, nullable=True),
    sa.Column("attempt_log", JsonDoc, nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("delivered_at", UTCDateTime, nullable=True),
    sa.Index("ix_webhooks_state_next_attempt_at", "state", "next_attempt_at"),
)

# Images clients uploaded (``POST /api/v1/uploads``), for retention.
uploads = sa.Table(
    "uploads",
    metadata,
    sa.Column("image_id", sa.String(40), primary_key=True),
    sa.Column("owner", sa.String(255), nullable=True),
    sa.Column("content_type", sa.String(32), nullable=False),
    sa.Column("size", sa.Integer, nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Index("ix_uploads_created_at", "created_at"),
)

# -- the worker registry (migration 0004) ----------------------------------------------------------

# One row per running worker, written by the worker itself (``jobs/workers.py``): at start, every few
# seconds and when its loaded models change; removed when it stops cleanly. A row whose ``last_seen``
# is older than the registry's TTL is a worker that died: shown as stale, deleted later.
workers = sa.Table(
    "workers",
    metadata,
    sa.Column("id", sa.String(255), primary_key=True),
    sa.Column("host", sa.String(255), nullable=False),
    sa.Column("pid", sa.Integer, nullable=False),
    sa.Column("device", sa.String(64), nullable=True),
    sa.Column("engine", sa.String(64), nullable=True),
    sa.Column("models", JsonDoc, nullable=False),  # names of the models it holds loaded, a JSON list
    sa.Column("free_memory_bytes", sa.BigInteger, nullable=True),  # None: the engine cannot tell
    sa.Column("current_job_id", sa.String(40), nullable=True),
    sa.Column("started_at", UTCDateTime, nullable=False),
    sa.Column("last_seen", UTCDateTime, nullable=False),
    sa.Index("ix_workers_last_seen", "last_seen"),
)

# -- identity, limits and audit (migration 0006) ---------------------------------------------------

# One row per API key (``jobs/keys.py``). The key itself is never stored: ``secret_hash`` is the
# SHA-256 of it (keys carry 256 random bits, so no slow hash is needed), ``prefix`` its visible
# start, shown in lists and logs. ``id`` is the key's identity: what its jobs store as their owner;
# a rotation gives the same id a new secret, so its jobs stay its own.
api_keys = sa.Table(
    "api_keys",
    metadata,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("name", sa.String(255), nullable=False),
    sa.Column("prefix", sa.String(32), nullable=False, unique=True),
    sa.Column("secret_hash", sa.String(64), nullable=False),
    sa.Column("scopes", JsonDoc, nullable=False),  # a JSON list: generate, read, admin
    # A JSON object: rate_per_min, rate_burst, images_per_day, gpu_seconds_per_day, max_concurrent.
    sa.Column("limits", JsonDoc, nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("expires_at", UTCDateTime, nullable=True),
    sa.Column("revoked_at", UTCDateTime, nullable=True),
    sa.Column("rotated_at", UTCDateTime, nullable=True),
    sa.Column("last_used_at", UTCDateTime, nullable=True),
    sa.Index("ix_api_keys_name", "name"),
)

# A key's request-rate token bucket: ``tokens`` left at ``updated_at`` (refilled lazily, updated
# under a row lock, so every API node draws from the one bucket).
rate_buckets = sa.Table(
    "rate_buckets",
    metadata,
    sa.Column("principal", sa.String(255), primary_key=True),
    sa.Column("tokens", sa.Float, nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
)

# What a principal used on one UTC day: images reserved at submit (refunded when a job is refused
# or fails before it makes them) and GPU seconds its finished jobs took.
daily_usage = sa.Table(
    "daily_usage",
    metadata,
    sa.Column("principal", sa.String(255), nullable=False),
    sa.Column("day", sa.String(10), nullable=False),  # YYYY-MM-DD, UTC
    sa.Column("images", sa.Integer, nullable=False),
    sa.Column("gpu_seconds", sa.Float, nullable=False),
    sa.PrimaryKeyConstraint("principal", "day"),
)

# One record per API call (``server/audit.py``): who (the key id, never the key), what, the outcome.
# ``prompt`` only when the operator turns prompt auditing on.
audit_log = sa.Table(
    "audit_log",
    metadata,
    sa.Column("seq", SeqInt, primary_key=True, autoincrement=True),
    sa.Column("at", UTCDateTime, nullable=False),
    sa.Column("key_id", sa.String(40), nullable=True),
    sa.Column("principal", sa.String(255), nullable=True),
    sa.Column("dialect", sa.String(32), nullable=True),
    sa.Column("method", sa.String(16), nullable=False),
    sa.Column("route", sa.String(255), nullable=False),  # the route's template, e.g. /api/v1/jobs/{job_id}
    sa.Column("status", sa.Integer, nullable=False),
    sa.Column("job_id", sa.String(40), nullable=True),
    sa.Column("images", sa.Integer, nullable=True),
    sa.Column("gpu_seconds", sa.Float, nullable=True),
    sa.Column("filtered", sa.Boolean, nullable=True),  # the content filter refused the request or an image
    sa.Column("prompt", sa.Text, nullable=True),
    sa.Column("request_id", sa.String(64), nullable=True),
    sa.Index("ix_audit_log_key_id_seq", "key_id", "seq"),
    sa.Index("ix_audit_log_at", "at"),
)

# Every principal that uploaded an image (``uploads`` keeps the first; images are stored once by
# content, so two callers uploading the same bytes share one image and both may use it).
upload_owners = sa.Table(
    "upload_owners",
    metadata,
    sa.Column("image_id", sa.String(40), nullable=False),
    sa.Column("owner", sa.String(255), nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.PrimaryKeyConstraint("image_id", "owner"),
)

# A1111 ``/sdapi/v1/options`` per principal: each key's (or Basic user's) own overrides over the
# server's defaults (the admin's set, kept by the A1111 dialect as before).
principal_options = sa.Table(
    "principal_options",
    metadata,
    sa.Column("principal", sa.String(255), primary_key=True),
    sa.Column("options", JsonDoc, nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
)

# ComfyUI files a principal uploaded (``/upload/image``, ``/upload/mask``): ComfyUI's
# (type, subfolder, name) of each file, per owner, and the stored image holding its bytes.
comfy_files = sa.Table(
    "comfy_files",
    metadata,
    sa.Column("owner", sa.String(255), nullable=False),  # "" for the anonymous principal
    sa.Column("type", sa.String(16), nullable=False),  # input, temp, output
    sa.Column("subfolder", sa.String(255), nullable=False),
    sa.Column("name", sa.String(255), nullable=False),
    sa.Column("image_id", sa.String(40), nullable=False),
    sa.Column("width", sa.Integer, nullable=True),  # the picture's size, for LoadImage's checks
    sa.Column("height", sa.Integer, nullable=True),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.PrimaryKeyConstraint("owner", "type", "subfolder", "name"),
)

# ComfyUI prompts: the prompt id a client sees (its own, or the job id), the job that runs it, and
# its queue number (``seq``, unless the client gave one); ``hidden``: deleted from /history.
comfy_prompts = sa.Table(
    "comfy_prompts",
    metadata,
    sa.Column("seq", SeqInt, primary_key=True, autoincrement=True),
    sa.Column("prompt_id", sa.String(64), nullable=False, unique=True),
    sa.Column("job_id", sa.String(40), nullable=True, unique=True),
    sa.Column("owner", sa.String(255), nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("hidden", sa.Boolean, nullable=False, default=False),
    sa.Index("ix_comfy_prompts_owner_seq", "owner", "seq"),
)
