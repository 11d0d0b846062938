"""Storage faults: a full, read-only or failing disk under the job database or the images.

``storage_error`` turns what the OS, SQLite or PostgreSQL raise for those into one
``StorageUnavailable`` (``StorageFull`` for "no space") whose message names what could not be
written; every other error is left alone. ``StorageHealth`` remembers a store's last write fault
until one of its writes succeeds again, so ``/readyz`` can say why it is not ready, and say it is
again once space returns. ``data_dir_problem`` is the start-up check: one line, before serving.
"""

from __future__ import annotations

import errno
import os
import sqlite3
import tempfile
import threading
from contextlib import suppress
from pathlib import Path

import sqlalchemy as sa

from sdgate.core.errors import StorageFull, StorageUnavailable

_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
_READ_ONLY_ERRNOS = frozenset({errno.EROFS})
_FAILING_ERRNOS = frozenset({errno.EIO, errno.EACCES, errno.EPERM})
# SQLite reports the disk through messages only (its extended codes are not exposed before 3.11).
_SQLITE_FULL = ("database or disk is full",)
_SQLITE_READ_ONLY = ("readonly database", "read-only")
_SQLITE_FAILING = ("disk i/o error", "unable to open database file")
# PostgreSQL: SQLSTATE class 53 "insufficient resources", 53100 being disk_full.
_PG_DISK_FULL = "53100"


def storage_error(what: str, exc: BaseException) -> StorageUnavailable | None:
    """The storage fault ``exc`` means while writing ``what`` ("the job database", "an image"),
    or None when it is some other error."""
    if isinstance(exc, StorageUnavailable):
        return exc
    if isinstance(exc, sa.exc.DBAPIError) and exc.orig is not None:
        return storage_error(what, exc.orig)
    if isinstance(exc, OSError) and exc.errno is not None:
        detail = exc.strerror or str(exc)
        if exc.errno in _FULL_ERRNOS:
            return StorageFull(f"storage full: could not write {what} ({detail})")
        if exc.errno in _READ_ONLY_ERRNOS:
            return StorageUnavailable(f"storage read-only: could not write {what} ({detail})")
        if exc.errno in _FAILING_ERRNOS:
            return StorageUnavailable(f"storage unavailable: could not write {what} ({detail})")
        return None
    message = str(exc)
    lowered = message.lower()
    if isinstance(exc, sqlite3.Error):
        if any(s in lowered for s in _SQLITE_FULL):
            return StorageFull(f"storage full: could not write {what} ({message})")
        if any(s in lowered for s in _SQLITE_READ_ONLY):
            return StorageUnavailable(f"storage read-only: could not write {what} ({message})")
        if any(s in lowered for s in _SQLITE_FAILING):
            return StorageUnavailable(f"storage unavailable: could not write {what} ({message})")
        return None
    if getattr(exc, "pgcode", None) == _PG_DISK_FULL or getattr(exc, "sqlstate", None) == _PG_DISK_FULL:
        return StorageFull(f"storage full: could not write {what} ({message.strip().splitlines()[0]})")
    return None


class StorageHealth:
    """One store's last write fault, kept until a write succeeds again. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._fault: StorageUnavailable | None = None

    @property
    def fault(self) -> StorageUnavailable | None:
        with self._lock:
            return self._fault

    def failed(self, fault: StorageUnavailable) -> None:
        with self._lock:
            self._fault = fault

    def succeeded(self) -> None:
        with self._lock:
            self._fault = None


def data_dir_problem(data_dir: Path, database_url: str) -> str | None:
    """Why a server could not write its data dir (read-only, full), in one line; None when it can.
    Creates the dir and the SQLite file if missing, as the server would, and leaves nothing else."""
    url = sa.make_url(database_url)
    database = None
    if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
        database = Path(url.database or "")
    step = f"cannot create {data_dir}"
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        if database is not None:
            step = f"cannot create {database}" if not database.exists() else f"cannot write {database}"
            with database.open("ab"):
                pass
        step = f"cannot create a file in {data_dir}"
        fd, name = tempfile.mkstemp(dir=data_dir, prefix=".sdgate-write-test-")
        os.close(fd)
        with suppress(OSError):
            os.unlink(name)
    except OSError as exc:
        if exc.errno in _FULL_ERRNOS:
            state = "is full"
        elif exc.errno in (*_READ_ONLY_ERRNOS, errno.EACCES, errno.EPERM):
            state = "is read-only"
        else:
            state = "is not writable"
        return f"the data dir {data_dir} {state} ({step}): {exc.strerror or exc}"
    return None
