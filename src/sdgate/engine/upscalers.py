"""Image upscalers: Lanczos, Nearest, None, and model files of every architecture spandrel knows.

A file in the models folder's ``ESRGAN/``, ``RealESRGAN/``, ``SwinIR/``, ``DAT/``, ``HAT/`` (A1111's
folders) or ``upscale_models/`` (ComfyUI's) is an upscaler named by its stem. spandrel
(``engine.spandrel_loader``) recognises its architecture (ESRGAN and Real-ESRGAN's RRDBNet, the
Compact SRVGG, SwinIR, HAT, DAT, ...) and its scale from the tensors alone; files are read as tensors
only, so nothing in a file can run code. Without spandrel the listing still works and using a file
is a 503 naming the install command; a file spandrel does not recognise is a 400 naming it.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from sdgate.core.errors import InvalidRequest
from sdgate.core.upscaler_files import UpscalerScales, scale_hint
from sdgate.core.upscalers import BUILTIN_UPSCALERS
from sdgate.engine.spandrel_loader import load_image_model

BUILTIN = BUILTIN_UPSCALERS
TILE = 192  # pixels of input per tile: bounds memory on large images
TILE_PAD = 16
UPSCALER_PURPOSES = ("SR", "Restoration")  # spandrel's: "Restoration" is a 1x model (denoise, ...)


@dataclass(frozen=True)
class UpscalerInfo:
    name: str
    path: Path | None = None
    scale: int = 4

    def listing(self) -> dict[str, Any]:
        """An A1111 ``/upscalers`` item."""
        return {
            "name": self.name,
            "model_name": None if self.path is None else self.path.stem,
            "model_path": None if self.path is None else str(self.path),
            "model_url": None,
            "scale": self.scale,
        }


class Upscalers:
    """Names -> upscalers; model files are loaded on first use and kept (one at a time)."""

    def __init__(
        self, files: list[Any], device: torch.device | str = "cpu", *, record: UpscalerScales | None = None
    ) -> None:
        self.device = torch.device(device)
        self._files = {f.name: Path(f.path) for f in files}
        self._scales: dict[Path, int] = {}  # the real scale, once a file has been loaded
        self._record = record  # where other processes' listings read the real scales
        self._loaded: tuple[str, Any] | None = None
        self._lock = threading.Lock()

    def list(self) -> list[UpscalerInfo]:
        """The built-in three, then the files; a file's scale is read from its name until it has
        been loaded (reading every file to list them would cost seconds per listing)."""
        infos = [UpscalerInfo(name, None, 4) for name in BUILTIN]
        infos += [
            UpscalerInfo(name, path, self._scales.get(path, scale_hint(name)))
            for name, path in self._files.items()
        ]
        return infos

    def upscale(self, image: Image.Image, name: str, width: int, height: int, *, field: str) -> Image.Image:
        """``image`` at ``width`` x ``height`` through the upscaler ``name`` (A1111's rule: the network
        runs at its own scale, as often as needed, then Lanczos brings it to the exact size)."""
        image = image.convert("RGB")
        if name in ("None", "", None):
            return (
                image
                if image.size == (width, height)
                else image.resize((width, height), Image.Resampling.LANCZOS)
            )
        if name == "Lanczos":
            return image.resize((width, height), Image.Resampling.LANCZOS)
        if name == "Nearest":
            return image.resize((width, height), Image.Resampling.NEAREST)
        path = self._files.get(name)
        if path is None:
            known = ", ".join(i.name for i in self.list())
            raise InvalidRequest(f"{field}: unknown upscaler {name!r} (known: {known})", field=field)
        with self._lock:
            model = self._model(name, path, field)
            current = image
            for _ in range(3):  # at most 3 passes (64x for a 4x model)
                if current.width >= width and current.height >= height:
                    break
                current = run_model(model, current, self.device)
                if model.scale == 1:  # a 1x model (denoiser, ...): once, Lanczos does the rest
                    break
        return current.resize((width, height), Image.Resampling.LANCZOS)

    def _model(self, name: str, path: Path, field: str) -> Any:
        if self._loaded is not None and self._loaded[0] == name:
            return self._loaded[1]
        self._loaded = None  # one model in memory at a time
        model = load_image_model(path, purposes=UPSCALER_PURPOSES, field=field).to(self.device)
        self._scales[path] = model.scale
        if self._record is not None:
            self._record.put(path, model.scale)
        self._loaded = (name, model)
        return model


@torch.inference_mode()
def run_model(model: Any, image: Image.Image, device: torch.device) -> Image.Image:
    """One pass of a spandrel ``ImageModelDescriptor`` over ``image``, tile by tile (with overlap)
    to bound memory, unless the model tiles itself. The descriptor pads each tile to the
    architecture's size rules (window multiples, ...) and crops the padding off again."""
    x = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)[None].to(device)
    _, _, h, w = x.shape
    s = model.scale
    if model.tiling.name == "INTERNAL":
        return to_image(model(x))
    out = torch.zeros(1, 3, h * s, w * s, device=device)
    for y0 in range(0, h, TILE):
        for x0 in range(0, w, TILE):
            y1, x1 = min(y0 + TILE, h), min(x0 + TILE, w)
            py0, px0 = max(y0 - TILE_PAD, 0), max(x0 - TILE_PAD, 0)
            py1, px1 = min(y1 + TILE_PAD, h), min(x1 + TILE_PAD, w)
            result = model(x[:, :, py0:py1, px0:px1])
            oy, ox = (y0 - py0) * s, (x0 - px0) * s
            out[:, :, y0 * s : y1 * s, x0 * s : x1 * s] = result[
                :, :, oy : oy + (y1 - y0) * s, ox : ox + (x1 - x0) * s
            ]
    return to_image(out)


def to_image(tensor: torch.Tensor) -> Image.Image:
    """A (1, 3, H, W) tensor in 0..1 as an RGB picture."""
    array = tensor[0].float().clamp(0, 1).mul(255).round().byte().permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(array, "RGB")


__all__ = ["BUILTIN", "UpscalerInfo", "Upscalers", "run_model", "scale_hint", "to_image"]
