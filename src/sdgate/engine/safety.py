"""The image half of the content filter: diffusers' Stable Diffusion safety checker, run on every
image an engine draws, whichever engine (diffusers, null, a test's fake).

Where its files go (``--safety-checker auto|on|off``; auto: used when they are there)::

    <models-dir>/safety_checker/
        config.json                     the checker's CLIPConfig (diffusers' safety_checker/ folder)
        model.safetensors               its weights (or pytorch_model.bin)
        preprocessor_config.json        the CLIP image processor (a pipeline's feature_extractor/)

A copy of a diffusers pipeline's two folders works as well: ``<models-dir>/safety_checker/``
holding ``safety_checker/`` (config and weights) and ``feature_extractor/`` (the processor). With no
processor config, CLIP's standard one at the checker's own image size is used.

``checked_engine(engine, settings)`` wraps an engine when the checker is on: after ``generate``,
each flagged image is replaced by a black image of the same size and marked ``filtered``
(``GeneratedImage.filtered`` -> ``StoredImage.filtered``), which each dialect reports its own way.
Live previews of the steps are withheld while the checker is on (A1111's ``/progress``
``current_image``, the native event stream): they show the image before it is checked.
Torch and transformers are imported only when the checker loads; finding its files is torch-free
(``safety_checker_files``), so a CLI can refuse to start before loading anything.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sdgate.core.engine import (
    Engine,
    EngineInputs,
    EngineJob,
    EngineOutput,
    GenerationControl,
    MemoryBudget,
    ModelDefaults,
    StepAction,
    StepReport,
    batch_rows,
    run_batch,
)
from sdgate.core.requests import GenerationRequest, GraphRequest
from sdgate.settings import Settings

if TYPE_CHECKING:
    from PIL.Image import Image

log = logging.getLogger("sdgate.safety")

SAFETY_CHECKER_DIR = "safety_checker"
_WEIGHTS = ("model.safetensors", "pytorch_model.bin")
FILTERED_NOTE = "content filter: {count} image(s) replaced by a black image (safety checker)"


class SafetyCheckerMissing(RuntimeError):
    """``--safety-checker on`` and no usable checker in the models folder; ``str()`` is one line."""


@dataclass(frozen=True)
class SafetyCheckerFiles:
    model_dir: Path  # config.json and the weights
    processor_config: Path | None  # preprocessor_config.json, when there is one


def safety_checker_files(models_dir: Path) -> SafetyCheckerFiles | None:
    """The checker's files under ``models_dir``, or None when its folder is not there."""
    root = models_dir / SAFETY_CHECKER_DIR
    if not root.is_dir():
        return None
    nested = root / SAFETY_CHECKER_DIR
    model_dir = nested if (nested / "config.json").is_file() else root
    processors = (root / "preprocessor_config.json", root / "feature_extractor" / "preprocessor_config.json")
    return SafetyCheckerFiles(model_dir, next((p for p in processors if p.is_file()), None))


def safety_checker_problem(settings: Settings) -> str | None:
    """Why the configured checker cannot load (one line), or None: it is off, or its files are there.
    Torch-free: for a CLI to call before starting."""
    if settings.safety_checker == "off":
        return None
    root = settings.resolved_models_dir / SAFETY_CHECKER_DIR
    files = safety_checker_files(settings.resolved_models_dir)
    if files is None:
        if settings.safety_checker == "auto":
            return None
        return f"--safety-checker on: no safety checker in {root} (config.json and model.safetensors)"
    if not (files.model_dir / "config.json").is_file():
        return f"safety checker: {files.model_dir / 'config.json'} is missing"
    if not any((files.model_dir / name).is_file() for name in _WEIGHTS):
        return f"safety checker: no weights in {files.model_dir} ({' or '.join(_WEIGHTS)})"
    return None


class SafetyChecker:
    """A loaded checker: ``flags(images)`` says which images it refuses."""

    def __init__(self, model: Any, processor: Any, device: str = "cpu") -> None:
        self._model = model
        self._processor = processor
        self._device = device
        self._lock = threading.Lock()  # one model, shared by every worker of the engine

    @classmethod
    def load(cls, files: SafetyCheckerFiles, device: str = "cpu") -> SafetyChecker:
        from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
        from transformers import CLIPImageProcessor

        model = StableDiffusionSafetyChecker.from_pretrained(files.model_dir).to(device).eval()
        if files.processor_config is not None:
            processor = CLIPImageProcessor.from_pretrained(files.processor_config.parent)
        else:
            size = int(model.config.vision_config.image_size)
            crop = {"height": size, "width": size}
            processor = CLIPImageProcessor(size={"shortest_edge": size}, crop_size=crop)
        return cls(model, processor, device)

    def flags(self, images: Sequence[Image]) -> list[bool]:
        """One flag per image: True where the checker sees a concept it refuses."""
        if not images:
            return []
        import numpy as np
        import torch

        rgb = [image.convert("RGB") for image in images]
        with self._lock, torch.no_grad():
            pixels = self._processor(images=rgb, return_tensors="pt").pixel_values
            pixels = pixels.to(self._device, dtype=self._model.dtype)
            # The checker blacks out its own copies of the images; ours are replaced by the caller.
            placeholders = np.zeros((len(rgb), 1, 1, 3), dtype=np.float32)
            _, flagged = self._model(clip_input=pixels, images=placeholders)
        return [bool(f) for f in flagged]


def load_safety_checker(settings: Settings, device: str = "cpu") -> SafetyChecker | None:
    """The checker ``settings`` asks for, or None (off, or auto without its files);
    ``SafetyCheckerMissing`` when it is on and cannot load."""
    problem = safety_checker_problem(settings)
    if problem is not None:
        raise SafetyCheckerMissing(problem)
    files = safety_checker_files(settings.resolved_models_dir) if settings.safety_checker != "off" else None
    if files is None:
        return None
    try:
        checker = SafetyChecker.load(files, device)
    except Exception as exc:  # a broken config or weights file: the server must not start half-safe
        raise SafetyCheckerMissing(f"safety checker in {files.model_dir} does not load: {exc}") from exc
    log.info("content filter: safety checker loaded from %s on %s", files.model_dir, device)
    return checker


class SafetyCheckedEngine:
    """``engine`` whose every image passes ``checker``: a flagged one becomes a black image of the
    same size, marked ``filtered``. Everything else is the wrapped engine's."""

    def __init__(
        self, engine: Engine, checker: SafetyChecker, *, on_filtered: Callable[[int], None] | None = None
    ) -> None:
        self.wrapped = engine
        self._checker = checker
        self._on_filtered = on_filtered

    @property
    def name(self) -> str:
        return self.wrapped.name

    def __getattr__(self, name: str) -> Any:  # device, catalog, memory_stats, ... of the engine
        if name == "wrapped":  # not set yet (copy, pickle): no endless recursion
            raise AttributeError(name)
        return getattr(self.wrapped, name)

    def model_defaults(self, model: str | None) -> ModelDefaults:
        return self.wrapped.model_defaults(model)

    def unload(self) -> None:
        self.wrapped.unload()

    def memory_budget(self) -> MemoryBudget | None:
        method = getattr(self.wrapped, "memory_budget", None)
        return method() if callable(method) else None

    def loaded_models(self) -> list[str]:
        method = getattr(self.wrapped, "loaded_models", None)
        return list(method()) if callable(method) else []

    def free_memory_bytes(self) -> int | None:
        method = getattr(self.wrapped, "free_memory_bytes", None)
        return method() if callable(method) else None

    def generate(
        self, request: GenerationRequest, inputs: EngineInputs, control: GenerationControl
    ) -> EngineOutput:
        return self._checked(self.wrapped.generate(request, inputs, _WithoutPreviews(control)))

    def batch_rows(self, request: GenerationRequest) -> int:
        return batch_rows(self.wrapped, request)

    def generate_batch(self, jobs: Sequence[EngineJob]) -> list[EngineOutput | BaseException]:
        """The wrapped engine's batch (or its jobs one by one), every image checked."""
        hidden = [dataclasses.replace(job, control=_WithoutPreviews(job.control)) for job in jobs]
        return [self._checked(out) if isinstance(out, EngineOutput) else out
                for out in run_batch(self.wrapped, hidden)]

    def run_graph(
        self, request: GraphRequest, inputs: EngineInputs, control: GenerationControl
    ) -> EngineOutput:
        """A ComfyUI graph on the wrapped engine, every image it saves checked."""
        from sdgate.engine.comfy.executor import run_graph

        return self._checked(run_graph(self.wrapped, request, inputs, _WithoutPreviews(control)))

    def _checked(self, output: EngineOutput) -> EngineOutput:
        filter_images(output, self._checker)
        count = sum(1 for image in output.images if image.filtered)
        if count and self._on_filtered is not None:
            self._on_filtered(count)
        return output


class _WithoutPreviews:
    """``control`` shown no step previews: they would show an image before the checker sees it."""

    def __init__(self, control: GenerationControl) -> None:
        self._control = control

    def on_step(self, report: StepReport) -> StepAction:
        return self._control.on_step(dataclasses.replace(report, preview=None))

    def __getattr__(self, name: str) -> Any:
        if name == "_control":
            raise AttributeError(name)
        return getattr(self._control, name)


def filter_images(output: EngineOutput, checker: SafetyChecker) -> None:
    """Replaces each image of ``output`` that ``checker`` flags by a black one, in place."""
    from PIL import Image as PILImage

    flags = checker.flags([generated.image for generated in output.images])
    count = 0
    for generated, flagged in zip(output.images, flags, strict=True):
        if flagged:
            generated.image = PILImage.new("RGB", generated.image.size)
            generated.filtered = True
            count += 1
    if count:
        log.info("content filter: %d of %d image(s) flagged by the safety checker", count, len(flags))
        output.notes.append(FILTERED_NOTE.format(count=count))


def checked_engine(
    engine: Engine, settings: Settings, *, on_filtered: Callable[[int], None] | None = None
) -> Engine:
    """``engine`` wrapped with the safety checker ``settings`` asks for; ``engine`` itself when none
    (nothing is imported then). ``SafetyCheckerMissing`` when it is on and cannot load."""
    if settings.safety_checker == "off":
        return engine
    if settings.safety_checker == "auto" and safety_checker_files(settings.resolved_models_dir) is None:
        return engine
    checker = load_safety_checker(settings, str(getattr(engine, "device", None) or "cpu"))
    if checker is None:
        return engine
    return SafetyCheckedEngine(engine, checker, on_filtered=on_filtered)
