"""Face restoration (GFPGAN, CodeFormer, RestoreFormer) through spandrel, on the whole picture.

A1111 finds faces with facexlib's RetinaFace detector, aligns each one to a 512x512 crop, restores
the crop and pastes it back. facexlib downloads its detector's weights at run time, which this
server never does, and no face detector ships with the packages it installs. So sdgate uses no
face detector: the whole picture is resized to the restorer's 512x512 input, restored, resized
back to its own size and blended with the original by the visibility (1 for ``restore_faces``,
``gfpgan_visibility`` / ``codeformer_visibility`` in extras). On a portrait or a head shot, where
the face fills the frame as in the restorers' training data, this does what a user expects; on a
picture with small faces the restorer sees no face it knows and mostly smooths the picture, so
keep the visibility low there. The infotext says ``Face restoration: <name>`` as A1111's does.

Which file runs which restorer is ``core.restorers``; files load through ``engine.spandrel_loader``
(tensors only). CodeFormer needs ``spandrel_extra_arches`` (see that module); without it a CodeFormer
file is a 400 saying spandrel does not recognise it.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from sdgate.core import restorers
from sdgate.core.models import AssetFile, ModelCatalog
from sdgate.engine.spandrel_loader import load_image_model
from sdgate.engine.upscalers import to_image

INPUT_SIZE = 512  # GFPGAN, CodeFormer and RestoreFormer all take 512x512 faces


class FaceRestorers:
    """Restorer names -> their files; a model is loaded on first use and kept (one at a time)."""

    def __init__(self, files: list[AssetFile], device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)
        self._files = restorers.available(files)
        self._loaded: tuple[str, Any] | None = None
        self._lock = threading.Lock()

    def restore(
        self,
        image: Image.Image,
        name: str,
        *,
        visibility: float = 1.0,
        codeformer_weight: float = 0.5,
        field: str,
    ) -> Image.Image:
        """``image`` with the restorer ``name`` blended in at ``visibility`` (0..1)."""
        image = image.convert("RGB")
        if visibility <= 0:
            return image
        if name not in self._files:
            restorers.choose(list(self._files.values()), name, field=field)  # raises its 400
        with self._lock:
            model = self._model(name, Path(self._files[name].path), field)
            restored = run_restorer(model, image, self.device, codeformer_weight)
        return restored if visibility >= 1 else Image.blend(image, restored, visibility)

    def _model(self, name: str, path: Path, field: str) -> Any:
        if self._loaded is not None and self._loaded[0] == name:
            return self._loaded[1]
        self._loaded = None
        model = load_image_model(path, purposes=("FaceSR",), field=field).to(self.device)
        self._loaded = (name, model)
        return model


@torch.inference_mode()
def run_restorer(
    model: Any, image: Image.Image, device: torch.device, codeformer_weight: float
) -> Image.Image:
    """The whole picture through a face model at its 512x512 input, back at the picture's size."""
    small = image.resize((INPUT_SIZE, INPUT_SIZE), Image.Resampling.LANCZOS)
    x = torch.from_numpy(np.asarray(small, dtype=np.float32) / 255.0).permute(2, 0, 1)[None].to(device)
    arch = model.architecture.id
    if arch in ("GFPGAN", "CodeFormer"):
        # Both work in -1..1 (their own repositories normalise so); spandrel's descriptor would clamp
        # the raw output to 0..1 first, so the network is called directly. GFPGAN's fixed noise
        # buffers (randomize_noise=False) keep a job reproducible.
        kwargs = {"randomize_noise": False} if arch == "GFPGAN" else {"weight": codeformer_weight}
        out = (model.model(x * 2 - 1, **kwargs)[0] + 1) / 2
    else:  # RestoreFormer: spandrel's call normalises itself
        out = model(x)
    return to_image(out).resize(image.size, Image.Resampling.LANCZOS)


_CACHE: dict[tuple[str, ...], FaceRestorers] = {}


def face_restorers(catalog: ModelCatalog, device: Any) -> FaceRestorers:
    """The models folder's restorers, kept between jobs while the files stay the same."""
    files = catalog.list_files("face_restorers")
    key = (str(device), *sorted(str(f.path) for f in files))
    if key not in _CACHE:
        _CACHE.clear()
        _CACHE[key] = FaceRestorers(files, device)
    return _CACHE[key]


def restore_pictures(
    pictures: list[Image.Image], name: str | None, catalog: ModelCatalog, device: Any
) -> tuple[list[Image.Image], dict[str, object]]:
    """A generation's pictures through ``restore_faces``'s restorer, and the infotext it adds."""
    if name is None:
        return pictures, {}
    found = face_restorers(catalog, device)
    out = [found.restore(p, name, field="restore_faces") for p in pictures]
    return out, {"Face restoration": name}
