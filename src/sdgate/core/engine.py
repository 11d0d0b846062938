"""The contract between the worker and an engine (diffusers, null, ...).

The worker resolves a request's ``image_refs()`` to decoded, validated PIL images grouped by role
(``EngineInputs``), and hands the engine one ``EngineJob`` per job: the request, its inputs and the
job's own control handle. The engine reports each step of a job through that job's
``GenerationControl``, whose answer tells it to go on, skip the current iteration, stop early
keeping what is done (A1111's interrupt), or abandon the job (cancel). A handle belongs to one job,
so an engine that runs several jobs in one call (GPU batching) can stop one and go on with the rest.

``run_job`` runs one job; ``run_batch`` runs compatible jobs (``core.batching.batch_key``) as one
engine call where the engine can (``generate_batch``: their images as rows of one UNet batch, each
row with its own prompt, guidance scale and seeded generator), else one after the other. Each job
gets its own output or its own exception: one job's bad input or cancel never fails its mates.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Protocol

from sdgate.core.requests import ControlNetUnit, GenerationRequest, ImageRef, ImageRole

if TYPE_CHECKING:
    from PIL.Image import Image


class StepAction(StrEnum):
    CONTINUE = "continue"
    SKIP = "skip"  # abandon the current iteration (batch), go on with the next
    INTERRUPT = "interrupt"  # stop now, decode what there is, return the images so far
    CANCEL = "cancel"  # stop now, return nothing: the engine raises JobCancelled


@dataclass(frozen=True)
class StepReport:
    iteration: int  # 0-based index into n_iter (and the hires pass, counted as further iterations)
    iterations: int
    step: int  # 1-based step within this iteration
    steps: int
    # A cheap preview of the current latents, built only when asked for.
    preview: Callable[[], Image] | None = None
    # The graph node running (a ComfyUI prompt's node id); None for a plain generation.
    node: str | None = None


class GenerationControl(Protocol):
    def on_step(self, report: StepReport) -> StepAction: ...


class NoControl:
    """Runs to the end; for scripts and tests."""

    def on_step(self, report: StepReport) -> StepAction:
        return StepAction.CONTINUE


@dataclass(frozen=True)
class EngineInputs:
    """A job's decoded input images by role: init images (in the order of ``request.init_images``),
    the mask, and each ControlNet unit's image and mask (``controls`` pairs them with the units)."""

    init_images: tuple[Image, ...] = ()
    mask: Image | None = None
    control_images: tuple[Image, ...] = ()
    control_masks: tuple[Image, ...] = ()

    @classmethod
    def from_refs(cls, loaded: Iterable[tuple[ImageRef, Image]]) -> EngineInputs:
        """Inputs from ``(ref, image)`` pairs in ``request.image_refs()`` order."""
        by_role: dict[ImageRole, list[Image]] = {role: [] for role in ImageRole}
        for ref, image in loaded:
            by_role[ref.role].append(image)
        masks = by_role[ImageRole.MASK]
        if len(masks) > 1:
            raise ValueError(f"a job has at most one mask, not {len(masks)}")
        return cls(
            init_images=tuple(by_role[ImageRole.INIT]),
            mask=masks[0] if masks else None,
            control_images=tuple(by_role[ImageRole.CONTROL]),
            control_masks=tuple(by_role[ImageRole.CONTROL_MASK]),
        )

    def controls(self, request: GenerationRequest) -> list[tuple[ControlNetUnit, Image | None, Image | None]]:
        """Each ControlNet unit of ``request`` with its decoded image (None: the unit names none, and
        uses the first init image) and mask, matched in unit order."""
        images, masks = iter(self.control_images), iter(self.control_masks)
        found: list[tuple[ControlNetUnit, Image | None, Image | None]] = []
        for unit in request.controlnets:
            image = next(images) if unit.image is not None else None
            found.append((unit, image, next(masks) if unit.mask is not None else None))
        return found


@dataclass(frozen=True)
class EngineJob:
    """One job of an engine call: what it asks, its decoded inputs, and its own control handle
    (the worker makes one per job; progress, skip, interrupt and cancel act on this job only)."""

    request: GenerationRequest
    inputs: EngineInputs
    control: GenerationControl


@dataclass
class GeneratedImage:
    image: Image
    seed: int
    subseed: int
    infotext: str
    prompt: str = ""
    negative_prompt: str = ""
    filtered: bool = False  # the safety checker replaced it with a black image (engine/safety.py)


@dataclass
class EngineOutput:
    images: list[GeneratedImage]
    model_name: str
    model_hash: str | None
    sampler: str
    scheduler: str
    width: int
    height: int
    steps: int
    interrupted: bool = False
    notes: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    # A graph job (ComfyUI): its output nodes' images, ``{node_id: NodeImages}`` by index into
    # ``images``; empty for a plain generation.
    node_outputs: dict[str, NodeImages] = field(default_factory=dict)


@dataclass(frozen=True)
class NodeImages:
    """The images one output node of a graph produced: indices into ``EngineOutput.images``, and
    where ComfyUI files them (``output`` for SaveImage, ``temp`` for PreviewImage)."""

    indices: tuple[int, ...]
    kind: str = "output"
    filename_prefix: str = "ComfyUI"


@dataclass(frozen=True)
class ModelDefaults:
    """What a request that leaves size or steps out gets, and how sizes must be rounded."""

    name: str
    width: int
    height: int
    steps: int
    vae_scale_factor: int


@dataclass(frozen=True)
class MemoryBudget:
    """How much memory one job may use where an engine runs (``check_request`` compares each job's
    estimate with it), and how wide the numbers it computes with are."""

    bytes: int
    value_bytes: int = 2  # per value: 2 for fp16 / bf16, 4 for fp32
    where: str = "the device"  # for messages: "cuda:0", "the CPU's memory"


class Engine(Protocol):
    name: str

    def model_defaults(self, model: str | None) -> ModelDefaults:
        """Defaults of ``model`` (``None``: the default model), without loading weights if possible."""
        ...

    def generate(
        self, request: GenerationRequest, inputs: EngineInputs, control: GenerationControl
    ) -> EngineOutput: ...

    def unload(self) -> None:
        """Free what the engine holds on the device (A1111's unload-checkpoint)."""
        ...

    def memory_budget(self) -> MemoryBudget | None:
        """What one job may use (torch-free to call, cheap: asked at every submit); None: unknown,
        and no job is refused for its memory. Optional: see ``memory_budget``."""
        ...

    def loaded_models(self) -> list[str]:
        """Names (the catalog's ``name``, as dialects put in requests) of the models held loaded,
        most recently used first: the worker registry shows them and claims prefer their jobs.
        Optional: see ``loaded_models``."""
        ...

    def free_memory_bytes(self) -> int | None:
        """Free memory on the engine's device now (None: cannot tell). Optional: see
        ``free_memory_bytes``."""
        ...

    def batch_rows(self, request: GenerationRequest) -> int:
        """How many image rows one batch of ``request``'s shape (model, size) may hold now, from the
        free memory and the settings (``batch_max``); 1: no batching. Cheap, asked at every claim.
        Optional: see ``batch_rows``."""
        ...

    def generate_batch(self, jobs: Sequence[EngineJob]) -> list[EngineOutput | BaseException]:
        """Runs compatible jobs (the same ``core.batching.batch_key``) as one batch: per job, in
        order, its output or the exception that failed it alone (bad input, cancel: ``JobCancelled``).
        Raising means the batch as a whole failed (out of memory): the worker then runs each job
        alone. Every image equals what the job gives alone, within floating-point tolerance.
        Optional: see ``run_batch``."""
        ...


def preload(engine: object | None, model: str | None = None) -> str | None:
    """``engine.preload(model)`` (load, and compile when asked, before the first job): the
    loaded model's name, or None for an engine that loads nothing ahead."""
    method = getattr(engine, "preload", None)
    return str(method(model)) if callable(method) else None


def run_job(engine: Engine, job: EngineJob) -> EngineOutput:
    """``job`` on ``engine``: the one place the worker calls ``generate`` for a single job."""
    return engine.generate(job.request, job.inputs, job.control)


def run_batch(engine: Engine, jobs: Sequence[EngineJob]) -> list[EngineOutput | BaseException]:
    """``jobs`` (compatible, see ``generate_batch``) on ``engine``: as one batch where the engine
    can, else one after the other; per job its output or its own exception, in order."""
    method = getattr(engine, "generate_batch", None)
    if len(jobs) > 1 and callable(method):
        return list(method(jobs))
    outcomes: list[EngineOutput | BaseException] = []
    for job in jobs:
        try:
            outcomes.append(run_job(engine, job))
        except Exception as exc:  # the job's own failure; its mates still run
            outcomes.append(exc)
    return outcomes


def batch_rows(engine: object | None, request: GenerationRequest) -> int:
    """``engine.batch_rows(request)``, or 1 (no batching) for an engine that does not say."""
    method = getattr(engine, "batch_rows", None)
    return max(1, int(method(request))) if callable(method) else 1


def memory_budget(engine: object | None) -> MemoryBudget | None:
    """``engine.memory_budget()``, or None for no engine or one that does not say."""
    method = getattr(engine, "memory_budget", None)
    return method() if callable(method) else None


def loaded_models(engine: object | None) -> list[str]:
    """``engine.loaded_models()``, or none for no engine or one that does not say."""
    method = getattr(engine, "loaded_models", None)
    return list(method()) if callable(method) else []


def free_memory_bytes(engine: object | None) -> int | None:
    """``engine.free_memory_bytes()``, or None for no engine or one that does not say."""
    method = getattr(engine, "free_memory_bytes", None)
    return method() if callable(method) else None
