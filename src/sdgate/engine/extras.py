"""``Postprocessor``: A1111's extras (upscale, second upscaler, crop, face restorers) run on a worker.

A ``PostprocessRequest`` job arrives with its pictures decoded (``EngineInputs.init_images``); each
picture goes, in A1111 1.x's order, through ``upscaler_1`` to the upscaled size, ``upscaler_2``
blended in at its visibility, a centred crop to the asked size (to-size mode with crop), then each
face pass (``engine.restorers``). One output picture per input, with no infotext, as A1111's extras
answer.

Importing this module imports no torch, and neither do the built-in upscalers (``None``,
``Lanczos``, ``Nearest``): a model file's upscaler (``engine.upscalers``, spandrel) and the face
restorers import it when a job first needs them, on the worker. Loaded models are kept between jobs
while the models folder's files stay the same.
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Any

from PIL import Image

from sdgate.core.engine import (
    EngineInputs,
    EngineOutput,
    GeneratedImage,
    GenerationControl,
    StepAction,
    StepReport,
)
from sdgate.core.errors import JobCancelled
from sdgate.core.requests import PostprocessRequest
from sdgate.core.upscaler_files import scales_for
from sdgate.core.upscalers import BUILTIN_UPSCALERS

if TYPE_CHECKING:
    from sdgate.core.models import ModelCatalog

EXTRAS_MODEL = "extras"  # the model name an extras job's result carries (no checkpoint ran)


class Postprocessor:
    """Runs ``PostprocessRequest`` jobs with the catalog's upscaler and face-restorer files on
    ``device`` (a torch device name; ``"cpu"`` for an engine without one)."""

    def __init__(self, catalog: ModelCatalog, device: Any = "cpu") -> None:
        self.catalog = catalog
        self.device = device
        self._lock = threading.Lock()
        self._upscalers: tuple[tuple[str, ...], Any] | None = None  # (the files, their Upscalers)

    def run(
        self, request: PostprocessRequest, inputs: EngineInputs, control: GenerationControl
    ) -> EngineOutput:
        """Every picture of ``inputs`` through ``request``; ``control`` is asked after each one
        (cancel abandons the job, interrupt keeps the pictures done, skip goes on)."""
        started = time.perf_counter()
        images: list[GeneratedImage] = []
        interrupted = False
        total = len(inputs.init_images)
        for i, picture in enumerate(inputs.init_images):
            out = self.process(request, picture)
            images.append(GeneratedImage(out, seed=0, subseed=0, infotext=""))
            action = control.on_step(StepReport(iteration=i, iterations=total, step=1, steps=1))
            if action == StepAction.CANCEL:
                raise JobCancelled("the extras job was cancelled")
            if action == StepAction.INTERRUPT and i + 1 < total:
                interrupted = True
                break
        last = images[-1].image if images else None
        return EngineOutput(
            images=images,
            model_name=EXTRAS_MODEL,
            model_hash=None,
            sampler="",
            scheduler="",
            width=last.width if last is not None else 0,
            height=last.height if last is not None else 0,
            steps=0,
            interrupted=interrupted,
            timings={"total": time.perf_counter() - started},
        )

    def process(self, request: PostprocessRequest, image: Image.Image) -> Image.Image:
        """One picture, as A1111's ``run_extras`` does it."""
        w, h = request.target_size(image.width, image.height)
        inner = request.upscaled_size(image.width, image.height)
        out = self.upscale(image, request.upscaler_1, *inner, field="upscaler_1")
        second = request.second_upscaler
        if second is not None:
            blended = self.upscale(image, second, *inner, field="upscaler_2")
            out = Image.blend(out, blended, request.upscaler_2_visibility)
        if request.resize_mode == 1 and request.crop and out.size != (w, h):  # centred
            left, top = (out.width - w) // 2, (out.height - h) // 2
            out = out.crop((left, top, left + w, top + h))
        for face in request.faces:
            out = self._face_restorers().restore(
                out,
                face.restorer,
                visibility=face.visibility,
                codeformer_weight=request.codeformer_weight,
                field=face.field,
            )
        return out

    def upscale(self, image: Image.Image, name: str, width: int, height: int, *, field: str) -> Image.Image:
        """``image`` at ``width`` x ``height`` through the upscaler ``name`` (``engine.upscalers``'
        rules; the built-in three without torch)."""
        if name in ("", *BUILTIN_UPSCALERS):
            image = image.convert("RGB")
            if name == "Nearest":
                return image.resize((width, height), Image.Resampling.NEAREST)
            if name == "Lanczos" or image.size != (width, height):
                return image.resize((width, height), Image.Resampling.LANCZOS)
            return image
        return self.upscalers().upscale(image, name, width, height, field=field)

    def upscalers(self) -> Any:
        """The models folder's upscalers (``engine.upscalers.Upscalers``), built again when its
        files change."""
        from sdgate.engine.upscalers import Upscalers

        files = self.catalog.list_files("esrgan")
        key = tuple(str(f.path) for f in files)
        with self._lock:
            if self._upscalers is None or self._upscalers[0] != key:
                record = scales_for(self.catalog.settings.data_dir)
                self._upscalers = (key, Upscalers(files, self.device, record=record))
            return self._upscalers[1]

    def _face_restorers(self) -> Any:
        from sdgate.engine.restorers import face_restorers

        return face_restorers(self.catalog, self.device)


def postprocessor_for(engine: object, catalog: ModelCatalog) -> Postprocessor:
    """The postprocessor a worker beside ``engine`` runs extras jobs with: on the engine's device
    (``engine.device``, as ``DiffusersEngine`` has), the CPU for an engine without one."""
    return Postprocessor(getattr(engine, "catalog", None) or catalog, getattr(engine, "device", "cpu"))
