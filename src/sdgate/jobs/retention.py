"""Deleting jobs with everything that hangs off them, and the retention task that does it by age.

Images are content-addressed, so two jobs (a retry, the same seed twice) or a job and an upload may
share one image: an image is deleted only when no remaining job refers to it and it is not a live
upload.

    purge_job(store, images, job_id)         # DELETE /api/v1/jobs/{id}, after a cancel
    Retention(store, images, ttl_s=...).run_once()   # what the periodic cleanup task does

With ``audit_ttl_s`` it also deletes audit records older than that (``jobs/audit.py``); it always
prunes old daily usage and idle rate buckets (``Quotas.prune``, counted as ``usage``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa

from sdgate.core.jobs import Job, JobState
from sdgate.jobs.audit import delete_audit_before
from sdgate.jobs.database import transaction
from sdgate.jobs.images import ImageStore
from sdgate.jobs.quotas import Quotas
from sdgate.jobs.schema import idempotency_keys, job_events, jobs, upload_owners, uploads, webhooks
from sdgate.jobs.store import SqlJobStore

logger = logging.getLogger("sdgate.retention")

_BATCH = 100
# Progress events of jobs that ended this long ago are dropped from the event log (their state
# events stay, so a resuming stream still sees how the job ended).
PROGRESS_LOG_KEEP = timedelta(hours=1)


def job_image_ids(job: Job) -> list[str]:
    """Every image a job refers to: its inputs (whatever their role) and its results."""
    ids = [ref.id for ref in job.request.image_refs()]
    if job.result is not None:
        ids.extend(img.id for img in job.result.images)
    return list(dict.fromkeys(ids))


def images_in_use(conn: sa.Connection, image_ids: Iterable[str]) -> set[str]:
    """Which of ``image_ids`` a job row or a kept upload still refers to."""
    used: set[str] = set()
    for image_id in image_ids:
        pattern = f"%{image_id}%"  # ids are [a-z0-9_] only: nothing to escape
        referenced = sa.or_(
            sa.cast(jobs.c.request, sa.Text).like(pattern),
            sa.cast(jobs.c.result, sa.Text).like(pattern),
        )
        by_job = conn.execute(sa.select(jobs.c.seq).where(referenced).limit(1)).first()
        by_upload = conn.execute(sa.select(uploads.c.image_id).where(uploads.c.image_id == image_id)).first()
        if by_job is not None or by_upload is not None:
            used.add(image_id)
    return used


def purge_job(store: SqlJobStore, images: ImageStore, job_id: str) -> Job:
    """Deletes a terminal job, its event log, webhook, idempotency keys, and the images only it
    used. Raises ``NotFound`` / ``Conflict`` as ``SqlJobStore.delete`` does."""
    job = store.delete(job_id)
    with transaction(store.database, write=True) as conn:
        for table in (job_events, webhooks, idempotency_keys):
            conn.execute(sa.delete(table).where(table.c.job_id == job_id))
        candidates = job_image_ids(job)
        orphans = [i for i in candidates if i not in images_in_use(conn, candidates)]
    for image_id in orphans:
        images.delete(image_id)
    return job


class Retention:
    """Deletes finished jobs (and their images) older than ``ttl_s``, uploads no job uses that are
    older than ``ttl_s``, expired idempotency keys, and audit records older than ``audit_ttl_s``
    (counted as ``audit`` when set)."""

    def __init__(self, store: SqlJobStore, images: ImageStore, *, ttl_s: float | None,
                 interval_s: float = 300.0, audit_ttl_s: float | None = None,
                 quotas: Callable[[], Quotas] | None = None) -> None:
        self._store = store
        self._images = images
        self._ttl_s = ttl_s
        self._interval_s = interval_s
        self._audit_ttl_s = audit_ttl_s
        # The server's quotas (their clock), asked at each pass; else a wall-clock one.
        self._quotas = quotas or (lambda: Quotas(store.database))

    def run_once(self, now: datetime | None = None) -> dict[str, int]:
        counts_usage = self._quotas().prune(now)  # by the quotas' own clock unless ``now`` is given
        now = now or datetime.now(UTC)
        counts = {"jobs": 0, "uploads": 0, "keys": 0}
        with transaction(self._store.database, write=True) as conn:
            counts["keys"] = int(
                conn.execute(sa.delete(idempotency_keys).where(idempotency_keys.c.expires_at <= now)).rowcount
                or 0
            )
            ended = sa.select(jobs.c.id).where(
                jobs.c.state.in_([s.value for s in JobState if s.terminal]),
                jobs.c.finished_at < now - PROGRESS_LOG_KEEP,
            )
            conn.execute(
                sa.delete(job_events).where(job_events.c.kind == "progress", job_events.c.job_id.in_(ended))
            )
        counts["usage"] = counts_usage
        if self._audit_ttl_s is not None:
            audit_cutoff = now - timedelta(seconds=self._audit_ttl_s)
            counts["audit"] = delete_audit_before(self._store.database, audit_cutoff)
            if counts["audit"]:
                logger.info("retention: deleted %d audit record(s)", counts["audit"])
        if self._ttl_s is None:
            return counts
        cutoff = now - timedelta(seconds=self._ttl_s)
        terminal = [s.value for s in JobState if s.terminal]
        while True:
            with transaction(self._store.database, write=False) as conn:
                old = conn.execute(
                    sa.select(jobs.c.id)
                    .where(jobs.c.state.in_(terminal), jobs.c.finished_at < cutoff)
                    .limit(_BATCH)
                ).scalars().all()
            for job_id in old:
                try:
                    purge_job(self._store, self._images, job_id)
                    counts["jobs"] += 1
                except Exception:
                    logger.exception("retention: could not delete job %s", job_id)
            if len(old) < _BATCH:
                break
        counts["uploads"] = self._expire_uploads(cutoff)
        if any(counts.values()):
            logger.info("retention: deleted %(jobs)d job(s), %(uploads)d upload(s), %(keys)d key(s)", counts)
        return counts

    def _expire_uploads(self, cutoff: datetime) -> int:
        with transaction(self._store.database, write=True) as conn:
            expired = conn.execute(
                sa.select(uploads.c.image_id).where(uploads.c.created_at < cutoff)
            ).scalars().all()
            conn.execute(sa.delete(uploads).where(uploads.c.image_id.in_(expired)))
            conn.execute(sa.delete(upload_owners).where(upload_owners.c.image_id.in_(expired)))
            used = images_in_use(conn, expired)
        for image_id in expired:
            if image_id not in used:
                self._images.delete(image_id)
        return len(expired)

    async def run(self) -> None:
        """Until cancelled: one pass every ``interval_s``."""
        while True:
            try:
                await asyncio.to_thread(self.run_once)
            except Exception:
                logger.exception("retention pass failed")
            await asyncio.sleep(self._interval_s)
