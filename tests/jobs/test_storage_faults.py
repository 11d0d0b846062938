"""A full or read-only disk under the job database or the images: one clear 507 error naming what
could not be written, remembered until a write succeeds again.

The database fault is injected where SQLite itself would raise it (the DBAPI call, so SQLAlchemy
wraps it as it would the real one); the image store's through the OS call that writes the bytes.
"""

from __future__ import annotations

import errno
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from sdgate.core.errors import StorageFull, StorageUnavailable, error_from_dict
from sdgate.core.requests import GenerationRequest
from sdgate.jobs.images import LocalImageStore
from sdgate.jobs.storage import data_dir_problem, storage_error
from sdgate.jobs.store import SqlJobStore
from tests.jobs.faults import DiskFull


@pytest.fixture
def db_url(sqlite_url: str) -> str:
    """SQLite only: the faults are SQLite's own (sqlite3 errors, a file's disk)."""
    return sqlite_url


@pytest.fixture
def disk(store: SqlJobStore) -> Iterator[DiskFull]:
    yield DiskFull(store.database)


@pytest.mark.parametrize(
    ("exc", "kind", "text"),
    [
        (OSError(errno.ENOSPC, "No space left on device"), StorageFull, "full: could not write X (No space"),
        (OSError(errno.EDQUOT, "Disk quota exceeded"), StorageFull, "storage full"),
        (OSError(errno.EROFS, "Read-only file system"), StorageUnavailable, "storage read-only"),
        (OSError(errno.EIO, "Input/output error"), StorageUnavailable, "storage unavailable"),
        (sqlite3.OperationalError("database or disk is full"), StorageFull, "full: could not write X"),
        (sqlite3.OperationalError("attempt to write a readonly database"), StorageUnavailable, "read-only"),
        (sqlite3.OperationalError("disk I/O error"), StorageUnavailable, "storage unavailable"),
    ],
)
def test_storage_errors_are_named(exc: BaseException, kind: type, text: str) -> None:
    fault = storage_error("X", exc)
    assert type(fault) is kind and fault.status_code == 507
    assert text in fault.message
    wrapped = sa.exc.OperationalError("INSERT ...", {}, exc)  # as SQLAlchemy raises it
    assert type(storage_error("X", wrapped)) is kind


@pytest.mark.parametrize(
    "exc",
    [OSError(errno.ENOENT, "No such file"), sqlite3.OperationalError("no such table: jobs"), ValueError("x")],
)
def test_other_errors_are_not_storage_faults(exc: BaseException) -> None:
    assert storage_error("X", exc) is None


def test_errors_round_trip_through_a_job_record() -> None:
    err = error_from_dict(StorageFull("storage full: could not write an image (No space)").to_dict())
    assert type(err) is StorageFull and err.status_code == 507 and err.code == "storage_full"


def test_a_full_database_refuses_writes_with_507_and_recovers(store: SqlJobStore, disk: DiskFull) -> None:
    queued = store.submit(GenerationRequest(prompt="before"))
    disk.on = True

    with pytest.raises(StorageFull) as raised:
        store.submit(GenerationRequest(prompt="refused"))
    assert raised.value.message == "storage full: could not write the job database (database or disk is full)"
    assert store.storage_fault is not None and store.storage_fault.code == "storage_full"
    assert [j.request.prompt for j in store.list()] == ["before"]  # nothing half-written
    assert store.get(queued.id).request.prompt == "before"  # reads still work
    with pytest.raises(StorageFull):
        store.probe_write()

    disk.on = False
    store.probe_write()  # a periodic probe finds room again
    assert store.storage_fault is None
    disk.on = True
    with pytest.raises(StorageFull):
        store.fail(queued.id, {"code": "x", "message": "y"})
    disk.on = False
    store.submit(GenerationRequest(prompt="after"))  # so does any successful write
    assert store.storage_fault is None


def test_a_read_only_database_is_named(store: SqlJobStore) -> None:
    DiskFull(store.database, "attempt to write a readonly database").on = True
    with pytest.raises(StorageUnavailable) as raised:
        store.submit(GenerationRequest(prompt="x"))
    assert type(raised.value) is StorageUnavailable
    assert raised.value.message.startswith("storage read-only: could not write the job database")


def test_a_full_image_disk_refuses_puts_and_leaves_no_partial_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    images = LocalImageStore(tmp_path / "images")
    real_fsync = os.fsync

    def no_space(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", no_space)
    with pytest.raises(StorageFull) as raised:
        images.put(b"\x89PNG one")
    assert raised.value.message == "storage full: could not write an image (No space left on device)"
    assert images.storage_fault is raised.value
    assert [p for p in (tmp_path / "images").rglob("*") if p.is_file()] == []
    with pytest.raises(StorageFull):
        images.probe_write()

    monkeypatch.setattr(os, "fsync", real_fsync)
    images.probe_write()
    assert images.storage_fault is None
    assert images.get(images.put(b"\x89PNG two")) == b"\x89PNG two"


def test_a_writable_data_dir_has_no_problem(tmp_path: Path) -> None:
    data = tmp_path / "data"
    assert data_dir_problem(data, f"sqlite:///{data / 'sdgate.db'}") is None
    assert sorted(p.name for p in data.iterdir()) == ["sdgate.db"]


def test_a_write_transaction_that_changes_nothing_does_not_clear_a_fault(
    store: SqlJobStore, disk: DiskFull
) -> None:
    # A lease sweep or an empty claim takes the write lock and writes nothing: that proves nothing
    # about the disk, so /readyz must stay not ready until a real write or the probe succeeds.
    from sdgate.jobs.database import transaction

    disk.on = True
    with pytest.raises(StorageFull):
        store.submit(GenerationRequest(prompt="refused"))
    with transaction(store.database, write=True) as conn:
        conn.execute(sa.text("SELECT 1"))
    assert store.storage_fault is not None
    assert store.claim_next("worker-x") is None  # nothing queued: a write transaction, no write
    assert store.storage_fault is not None
    disk.on = False
    store.probe_write()
    assert store.storage_fault is None
