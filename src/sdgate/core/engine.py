"""The contract between the worker and an engine (diffusers, null, ...).

The worker resolves image ids to decoded, validated PIL images, calls ``generate`` once per job, and
reports each step through a ``GenerationControl`` whose answer tells the engine to go on, skip the
current iteration, stop early keeping what is done (A1111's interrupt), or abandon the job (cancel).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Protocol

from sdgate.core.requests import GenerationRequest

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


class GenerationControl(Protocol):
    def on_step(self, report: StepReport) -> StepAction: ...


class NoControl:
    """Runs to the end; for scripts and tests."""

    def on_step(self, report: StepReport) -> StepAction:
        return StepAction.CONTINUE


@dataclass(frozen=True)
class EngineInputs:
    """Decoded inputs for img2img / inpaint, in the order of ``request.init_images``."""

    init_images: tuple[Image, ...] = ()
    mask: Image | None = None


@dataclass
class GeneratedImage:
    image: Image
    seed: int
    subseed: int
    infotext: str
    prompt: str = ""
    negative_prompt: str = ""


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


def memory_budget(engine: object | None) -> MemoryBudget | None:
    """``engine.memory_budget()``, or None for no engine or one that does not say."""
    method = getattr(engine, "memory_budget", None)
    return method() if callable(method) else None
