"""Batch helpers shared by both clients: request normalising and a resumable output folder.

Each item owns the names ``<index:05d>-<fingerprint[:10]>-<i>.png`` plus a ``.json`` record that is
written last (atomically); an item whose record exists is skipped by a later run.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from sdgate.client._types import BatchItem, GenerationResult, ImageRequest


def normalize_requests(requests: Iterable[ImageRequest | str | dict[str, Any]]) -> list[ImageRequest]:
    out: list[ImageRequest] = []
    for item in requests:
        if isinstance(item, ImageRequest):
            out.append(item)
        elif isinstance(item, str):
            out.append(ImageRequest(prompt=item))
        elif isinstance(item, dict):
            out.append(ImageRequest.from_dict(item))
        else:
            raise TypeError(
                f"a batch item must be an ImageRequest, a prompt or a dict, not {type(item).__name__}"
            )
    return out


class BatchOutput:
    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)

    def stem(self, index: int, request: ImageRequest) -> str:
        return f"{index:05d}-{request.fingerprint()[:10]}"

    def record_path(self, index: int, request: ImageRequest) -> Path:
        return self.directory / f"{self.stem(index, request)}.json"

    def existing(self, index: int, request: ImageRequest) -> BatchItem | None:
        """The item as an earlier run left it, or ``None`` when it still has to run."""
        try:
            record = json.loads(self.record_path(index, request).read_text())
            paths = [self.directory / name for name in record["images"]]
        except (OSError, ValueError, KeyError, TypeError):
            return None
        if not all(p.exists() for p in paths):
            return None
        return BatchItem(index=index, request=request, paths=paths, skipped=True)

    def write(self, index: int, request: ImageRequest, result: GenerationResult) -> list[Path]:
        paths = result.save(self.directory, prefix=self.stem(index, request))
        record = {
            "index": index,
            "prompt": request.prompt,
            "seeds": result.seeds,
            "infotexts": result.infotexts,
            "job_id": result.job_id,
            "backend": result.backend,
            "ignored_fields": list(result.ignored_fields),
            "images": [p.name for p in paths],
        }
        final = self.record_path(index, request)
        tmp = final.with_suffix(f".json.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(record, indent=1))
        os.replace(tmp, final)
        return paths
