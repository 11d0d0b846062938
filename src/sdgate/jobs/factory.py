"""The one place that turns locations into stores: a database URL and a storage location.

    stores = open_stores(database="sqlite:///data/sdgate.db", storage="data/images")
    stores.jobs      # JobStore   (SQLite now; postgresql://... over the same SQLAlchemy store)
    stores.images    # ImageStore (a folder now; s3://bucket/prefix in cluster mode)
    stores.events    # this process's bus, fed by the store and by the outbox follower
    stores.outbox    # follows every process's job events in the shared database
    stores.close()

As httpx picks a transport from a URL behind one interface, everything above ``jobs/`` sees only
the protocols (``core.jobs.JobStore``, ``jobs.images.ImageStore``); the concrete classes are named
here and nowhere else outside ``jobs/``. Modules of ``jobs/`` that keep their own tables (event
log, idempotency keys, webhooks, uploads) are built from ``stores.database``, an opaque handle the
server passes along without running SQL on it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import sqlalchemy as sa

from sdgate.core.jobs import JobStore
from sdgate.jobs.events import JobEvents
from sdgate.jobs.images import ImageStore, LocalImageStore
from sdgate.jobs.outbox import OutboxFollower

if TYPE_CHECKING:
    from sdgate.settings import Settings

SQL_SCHEMES = ("sqlite", "postgresql")


class StoreLocationError(ValueError):
    """A database URL or storage location sdgate cannot use; the message names which and why."""


@dataclass
class Stores:
    jobs: JobStore
    images: ImageStore
    events: JobEvents
    outbox: OutboxFollower
    database: sa.Engine  # for the jobs/ modules with their own tables; never for SQL outside jobs/

    def close(self) -> None:
        self.outbox.stop()
        self.database.dispose()


def check_database_url(url: str) -> str:
    """``url`` when it names a database sdgate speaks; else ``StoreLocationError``."""
    try:
        parsed = sa.make_url(url)
    except sa.exc.ArgumentError:
        raise StoreLocationError(
            f"database: {url!r} is not a database URL (sqlite:///path/sdgate.db or "
            "postgresql://user:pass@host/db)"
        ) from None
    backend = parsed.get_backend_name()
    if backend not in SQL_SCHEMES:
        raise StoreLocationError(f"database: {backend!r} is not supported (sqlite or postgresql)")
    if backend == "postgresql" and parsed.get_driver_name() in ("psycopg2", "asyncpg", "pg8000"):
        raise StoreLocationError("database: use postgresql:// or postgresql+psycopg:// (psycopg 3)")
    if backend == "postgresql" and parsed.drivername == "postgresql":
        url = parsed.set(drivername="postgresql+psycopg").render_as_string(hide_password=False)
    return url


def image_store(location: str | Path, *, endpoint: str | None = None) -> ImageStore:
    """A folder (a path or ``file:///path``), or ``s3://bucket/prefix`` (cluster mode: ``endpoint``
    overrides boto3's for S3-compatible servers; the bucket must answer, else ``StorageUnavailable``)."""
    text = str(location)
    scheme = urlsplit(text).scheme if "://" in text else ""
    if scheme in ("", "file"):
        return LocalImageStore(Path(urlsplit(text).path if scheme else text))
    if scheme == "s3":
        try:
            from sdgate.jobs.s3images import S3ImageStore
        except ImportError as exc:
            raise StoreLocationError(f"storage: s3:// needs the S3 client, boto3 ({exc})") from None
        return S3ImageStore.from_url(text, endpoint=endpoint)
    raise StoreLocationError(f"storage: {scheme!r} is not supported (a folder, file:// or s3://)")


def open_stores(
    database: str,
    storage: str | Path,
    *,
    max_queue: int | None = None,
    lease_s: float | None = None,
    storage_endpoint: str | None = None,
    affinity_s: float | None = None,
) -> Stores:
    """Opens (and migrates) the job database and the image store, and wires the outbox follower to
    the store's commits. Raises ``StoreLocationError`` for a location sdgate cannot use."""
    from sdgate.jobs.store import SqlJobStore

    url = check_database_url(database)
    events = JobEvents()
    extra: dict[str, float] = {}
    if lease_s is not None:
        extra["lease_s"] = lease_s
    if affinity_s is not None:
        extra["affinity_s"] = affinity_s
    store = SqlJobStore(url, events=events, max_queue=max_queue, **extra)
    outbox = OutboxFollower(store.database, origin=store.origin, bus=events)
    store.on_commit(outbox.wake)
    try:
        images = image_store(storage, endpoint=storage_endpoint)
    except BaseException:
        store.close()
        raise
    return Stores(jobs=store, images=images, events=events, outbox=outbox, database=store.database)


def stores_for(settings: Settings) -> Stores:
    """The stores ``settings`` name (``--database``, ``--storage``; defaults in the data dir)."""
    return open_stores(
        settings.database_url,
        settings.storage_location,
        affinity_s=settings.model_affinity_s,
        max_queue=settings.max_queue,
        lease_s=settings.job_lease_s,
        storage_endpoint=settings.storage_endpoint,
    )
