"""What any process knows about upscaler model files without loading them (torch-free).

A file's scale is what its name announces (``4x-UltraSharp``, ``RealESRGAN_x2plus``; 4 when it says
nothing) until a worker has loaded it: the worker then records the real scale in
``UpscalerScales`` (a small JSON file in the data dir, valid while the file's mtime and size stay
the same), so every API process lists it, as A1111 lists a loaded model's real scale.
"""

from __future__ import annotations

import json
import os
import re
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from sdgate.core.upscalers import BUILTIN_UPSCALERS

BUILTIN_SCALE = 4  # what A1111 lists for the built-in upscalers


class _File(Protocol):
    name: str
    path: Path


def scale_hint(name: str) -> int:
    """The scale a file's name announces (``4x-UltraSharp``, ``RealESRGAN_x2plus``); 4 otherwise."""
    m = re.search(r"x(\d)|(\d)x", name.lower())
    return int(m[1] or m[2]) if m else 4


class UpscalerScales:
    """Real scales of loaded upscaler files by absolute path, shared through ``path`` (re-read at
    every ``get``: another process may have written it)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()

    def get(self, target: Path) -> int | None:
        entry = self._read().get(str(target))
        if not entry:
            return None
        try:
            stat = target.stat()
        except OSError:
            return None
        if entry.get("mtime") == stat.st_mtime and entry.get("size") == stat.st_size:
            return int(entry["scale"])
        return None

    def put(self, target: Path, scale: int) -> None:
        """Records ``scale``; a disk that refuses the write only loses the record."""
        try:
            stat = target.stat()
            with self._lock:
                data = self._read()
                data[str(target)] = {"mtime": stat.st_mtime, "size": stat.st_size, "scale": int(scale)}
                self.path.parent.mkdir(parents=True, exist_ok=True)
                tmp = self.path.with_name(f"{self.path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
                tmp.write_text(json.dumps(data, indent=1, sort_keys=True), encoding="utf-8")
                tmp.replace(self.path)
        except OSError:
            pass

    def _read(self) -> dict[str, dict[str, Any]]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}


def scales_for(data_dir: Path) -> UpscalerScales:
    """The data dir's record of real scales."""
    return UpscalerScales(data_dir / "cache" / "upscaler_scales.json")


def upscaler_listing(files: Sequence[_File], scales: UpscalerScales | None = None) -> list[dict[str, Any]]:
    """A1111's ``/upscalers``: the built-in three, then the files (the recorded scale, else the
    name's)."""
    items: list[dict[str, Any]] = [
        {"name": name, "model_name": None, "model_path": None, "model_url": None, "scale": BUILTIN_SCALE}
        for name in BUILTIN_UPSCALERS
    ]
    for name, path in {f.name: Path(f.path) for f in files}.items():
        scale = (scales.get(path) if scales is not None else None) or scale_hint(name)
        items.append(
            {
                "name": name,
                "model_name": path.stem,
                "model_path": str(path),
                "model_url": None,
                "scale": scale,
            }
        )
    return items
