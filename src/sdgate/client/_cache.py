"""A content-addressed disk cache for fixed-seed requests: same backend + same request = same key.

Layout: ``<dir>/<key[:2]>/<key>/{0.png, 1.png, ..., meta.json}``; ``meta.json`` is written last,
atomically, so a half-written entry is never read.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from sdgate.client._types import GenerationResult, ImageRequest
from sdgate.client.backends._base import decode_image


def cache_key(backend_identity: str, request: ImageRequest) -> str:
    return hashlib.sha256(f"{backend_identity}\n{request.fingerprint()}".encode()).hexdigest()


def cacheable(request: ImageRequest) -> bool:
    """Only a fixed seed (and a fixed variation seed, when one is used) makes a request repeatable."""
    if request.subseed_strength and (request.subseed is None or request.subseed < 0):
        return False
    return request.seed is not None and request.seed >= 0


class ImageCache:
    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)

    def _entry(self, key: str) -> Path:
        return self.directory / key[:2] / key

    def get(self, key: str) -> GenerationResult | None:
        entry = self._entry(key)
        try:
            meta = json.loads((entry / "meta.json").read_text())
            blobs = [(entry / f"{i}.png").read_bytes() for i in range(int(meta["count"]))]
        except (OSError, ValueError, KeyError):
            return None
        images = [decode_image(blob, where=f"cache {key[:12]}")[0] for blob in blobs]
        return GenerationResult(
            images=images,
            seeds=meta.get("seeds", []),
            infotexts=meta.get("infotexts", []),
            data=blobs,
            timings={},
            job_id=meta.get("job_id"),
            backend=meta.get("backend", ""),
            ignored_fields=tuple(meta.get("ignored_fields", ())),
            cached=True,
        )

    def put(self, key: str, result: GenerationResult) -> None:
        entry = self._entry(key)
        entry.mkdir(parents=True, exist_ok=True)
        for i, blob in enumerate(result.data):
            (entry / f"{i}.png").write_bytes(blob)
        meta = {
            "count": len(result.data),
            "seeds": result.seeds,
            "infotexts": result.infotexts,
            "job_id": result.job_id,
            "backend": result.backend,
            "ignored_fields": list(result.ignored_fields),
        }
        tmp = entry / f"meta.json.{os.getpid()}.tmp"
        tmp.write_text(json.dumps(meta))
        os.replace(tmp, entry / "meta.json")
