"""Where image bytes live: generated PNGs and uploaded init images / masks.

Ids are content addresses (``img_`` + the first 24 hex digits of the SHA-256 of the bytes): putting
the same bytes twice stores them once, and an id never points at different bytes. Because of that
sharing, ``delete`` removes the bytes for every job that produced them.

``LocalImageStore`` keeps one file per image under ``root/ab/cd/img_abcd....png``; an
S3-compatible store for the cluster mode implements the same protocol (it has no ``path``).
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from pathlib import Path
from typing import Protocol

from sdgate.core.errors import NotFound

_ID = re.compile(r"img_[0-9a-f]{24}")
EXTENSIONS = {"image/png": ".png", "image/jpeg": ".jpg", "image/webp": ".webp", "image/gif": ".gif"}
CONTENT_TYPES = {ext: ctype for ctype, ext in EXTENSIONS.items()}


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
        self.root.mkdir(parents=True, exist_ok=True)

    def put(self, data: bytes, *, content_type: str = "image/png") -> str:
        extension = EXTENSIONS.get(content_type)
        if extension is None:
            raise ValueError(f"unsupported image content type {content_type!r}")
        new_id = image_id(data)
        if self._find(new_id) is not None:
            return new_id
        target = self._shard(new_id) / f"{new_id}{extension}"
        target.parent.mkdir(parents=True, exist_ok=True)
        # Write a temporary file beside the target, then rename: readers never see half an image.
        fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=".tmp-", suffix=extension)
        try:
            with os.fdopen(fd, "wb") as tmp:
                tmp.write(data)
                tmp.flush()
                os.fsync(tmp.fileno())
            os.replace(tmp_name, target)
        except BaseException:
            Path(tmp_name).unlink(missing_ok=True)
            raise
        return new_id

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
            found.unlink(missing_ok=True)

    def _shard(self, image_id: str) -> Path:
        digest = image_id[4:]
        return self.root / digest[:2] / digest[2:4]

    def _find(self, image_id: str) -> Path | None:
        if not _ID.fullmatch(image_id):  # ids come from clients: nothing else may reach the file system
            return None
        shard = self._shard(image_id)
        for extension in EXTENSIONS.values():
            candidate = shard / f"{image_id}{extension}"
            if candidate.is_file():
                return candidate
        return None
