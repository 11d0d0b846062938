"""Where image bytes live: generated PNGs and uploaded init images / masks.

Ids are content addresses (``img_`` + the first 24 hex digits of the SHA-256 of the bytes): putting
the same bytes twice stores them once, and an id never points at different bytes. Because of that
sharing, ``delete`` removes the bytes for every job that produced them.

``LocalImageStore`` keeps one file per image under ``root/ab/cd/img_abcd....png``; an
S3-compatible store for the cluster mode implements the same protocol (it has no ``path``).

A full or read-only disk makes writes raise ``StorageFull`` / ``StorageUnavailable``; the store
remembers that (``storage_fault``) until a write succeeds again (``probe_write`` tries one).
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
import uuid
from contextlib import suppress
from pathlib import Path
from typing import Protocol

from sdgate.core.errors import NotFound, StorageUnavailable
from sdgate.jobs.storage import StorageHealth, storage_error

_ID = re.compile(r"img_[0-9a-f]{24}")
EXTENSIONS = {"image/png": ".png", "image/jpeg": ".jpg", "image/webp": ".webp", "image/gif": ".gif"}
CONTENT_TYPES = {ext: ctype for ctype, ext in EXTENSIONS.items()}
WHAT = "an image"


def extension_for(content_type: str) -> str:
    """The file extension an image of ``content_type`` is stored under; ``ValueError`` for a type
    no image store keeps."""
    extension = EXTENSIONS.get(content_type)
    if extension is None:
        raise ValueError(f"unsupported image content type {content_type!r}")
    return extension


def image_id(data: bytes) -> str:
    return "img_" + hashlib.sha256(data).hexdigest()[:24]


class ImageStore(Protocol):
    def put(self, data: bytes, *, content_type: str = "image/png") -> str:
        """Stores ``data``; returns its id."""
        ...

    def get(self, image_id: str) -> bytes:
        """Raises ``NotFound``."""
        ...

    def content_type(self, image_id: str) -> str:
        """Raises ``NotFound``."""
        ...

    def exists(self, image_id: str) -> bool: ...

    def delete(self, image_id: str) -> None:
        """Idempotent: deleting a missing image is not an error."""
        ...


class LocalImageStore:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._root = str(self.root)
        self._health = StorageHealth()
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            fault = storage_error(WHAT, exc)
            if fault is None:
                raise
            raise fault from exc

    @property
    def storage_fault(self) -> StorageUnavailable | None:
        """Why the last write failed (disk full, read-only), until a write succeeds again."""
        return self._health.fault

    def put(self, data: bytes, *, content_type: str = "image/png") -> str:
        extension = extension_for(content_type)
        new_id = image_id(data)
        # Plain strings and os calls: this runs once per image made, where pathlib's objects cost
        # more than the system calls. The same bytes have the same id and the same type, so the
        # target's own name is all there is to look for.
        shard = self._shard_dir(new_id)
        target = f"{shard}{os.sep}{new_id}{extension}"
        if os.path.isfile(target):
            return new_id
        try:
            try:
                self._write_file(shard, target, data)
            except FileNotFoundError:  # the shard's first image (or its folder was removed)
                os.makedirs(shard, exist_ok=True)
                self._write_file(shard, target, data)
        except OSError as exc:
            fault = self._fault(exc)
            if fault is None:
                raise
            raise fault from exc
        self._health.succeeded()
        return new_id

    def probe_write(self) -> None:
        """A real write of a small file that is then removed; raises ``StorageUnavailable``."""
        try:
            fd, tmp_name = tempfile.mkstemp(dir=self.root, prefix=".probe-")
            try:
                with os.fdopen(fd, "wb") as tmp:
                    tmp.write(bytes(4096))
                    tmp.flush()
                    os.fsync(tmp.fileno())
            finally:
                with suppress(OSError):
                    os.unlink(tmp_name)
        except OSError as exc:
            fault = self._fault(exc)
            if fault is None:
                raise
            raise fault from exc
        self._health.succeeded()

    @staticmethod
    def _write_file(folder: str, target: str, data: bytes) -> None:
        # Write a temporary file beside the target, then rename: readers never see half an image.
        # A fresh random name opened exclusively, as ``tempfile.mkstemp`` does, in one system call.
        tmp_name = f"{folder}{os.sep}.tmp-{uuid.uuid4().hex}{os.path.splitext(target)[1]}"
        fd = os.open(tmp_name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o600)
        try:
            with os.fdopen(fd, "wb") as tmp:
                tmp.write(data)
                tmp.flush()
                os.fsync(tmp.fileno())
            os.replace(tmp_name, target)
        except BaseException:
            with suppress(OSError):
                os.unlink(tmp_name)
            raise

    def _fault(self, exc: OSError) -> StorageUnavailable | None:
        """``exc`` as the storage fault it is (recorded for ``/readyz``), or None."""
        fault = storage_error(WHAT, exc)
        if fault is not None:
            self._health.failed(fault)
        return fault

    def get(self, image_id: str) -> bytes:
        return self.path(image_id).read_bytes()

    def path(self, image_id: str) -> Path:
        """The file holding the image. Raises ``NotFound``."""
        found = self._find(image_id)
        if found is None:
            raise NotFound(f"image {image_id} not found")
        return found

    def content_type(self, image_id: str) -> str:
        return CONTENT_TYPES[self.path(image_id).suffix]

    def exists(self, image_id: str) -> bool:
        return self._find(image_id) is not None

    def delete(self, image_id: str) -> None:
        found = self._find(image_id)
        if found is not None:
            try:
                found.unlink(missing_ok=True)
            except OSError as exc:
                fault = self._fault(exc)
                if fault is None:
                    raise
                raise fault from exc

    def _shard_dir(self, image_id: str) -> str:
        """The folder of an image: two levels named by its digest's first four hex digits."""
        digest = image_id[4:]
        return f"{self._root}{os.sep}{digest[:2]}{os.sep}{digest[2:4]}"

    def _shard(self, image_id: str) -> Path:
        return Path(self._shard_dir(image_id))

    def _find(self, image_id: str) -> Path | None:
        if not _ID.fullmatch(image_id):  # ids come from clients: nothing else may reach the file system
            return None
        shard = self._shard(image_id)
        for extension in EXTENSIONS.values():
            candidate = shard / f"{image_id}{extension}"
            if candidate.is_file():
                return candidate
        return None
