"""Expiring signed links to images in the image store (OpenAI's ``response_format=url``).

A link is ``/v1/images/files/{image_id}?expires=<unix s>&signature=<hex>``, the signature an
HMAC-SHA256 over the id and expiry. The key is ``settings.url_signing_secret`` or, when unset, a
random key kept in ``<data_dir>/url-signing.key`` (created on first use), so links survive a
restart and every API process sharing the data dir accepts them. Anyone holding a link can fetch
that one image until it expires; nothing else is reachable through it.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlencode

from sdgate.settings import Settings

SIGNED_PATH = "/v1/images/files"
_KEY_FILE = "url-signing.key"


def signing_key(settings: Settings) -> bytes:
    if settings.url_signing_secret:
        return settings.url_signing_secret.encode()
    path = Path(settings.data_dir) / _KEY_FILE
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        try:  # O_EXCL: two processes starting together agree on whichever key was written first
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass
        else:
            with os.fdopen(fd, "w") as fh:
                fh.write(secrets.token_hex(32))
    return path.read_text().strip().encode()


@dataclass(frozen=True)
class UrlSigner:
    key: bytes
    ttl_s: int

    @classmethod
    def from_settings(cls, settings: Settings) -> UrlSigner:
        return cls(signing_key(settings), settings.signed_url_ttl_s)

    def signature(self, image_id: str, expires: int) -> str:
        return hmac.new(self.key, f"{image_id}:{expires}".encode(), hashlib.sha256).hexdigest()

    def path(self, image_id: str, *, now: float | None = None) -> str:
        """The path (with query) of a link to ``image_id`` valid for ``ttl_s`` from ``now``."""
        expires = int((time.time() if now is None else now) + self.ttl_s)
        query = urlencode({"expires": expires, "signature": self.signature(image_id, expires)})
        return f"{SIGNED_PATH}/{image_id}?{query}"

    def verify(self, image_id: str, expires: int, signature: str, *, now: float | None = None) -> bool:
        """True when ``signature`` is ours for this id and expiry and the expiry has not passed."""
        expected = self.signature(image_id, expires)
        if not hmac.compare_digest(expected, signature):
            return False
        return (time.time() if now is None else now) <= expires
