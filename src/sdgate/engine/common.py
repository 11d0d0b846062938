"""What every engine shares and what needs no torch: sizes, infotext parameters, step accounting.

The null engine (benchmarks) and the diffusers engine must agree on defaults, size rules,
infotexts and the meaning of skip / interrupt / cancel, so those live here once.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sdgate.core.engine import GenerationControl, ModelDefaults, StepAction, StepReport
from sdgate.core.errors import InvalidRequest, JobCancelled
from sdgate.core.infotext import A1111_VERSION, format_infotext
from sdgate.core.requests import GenerationRequest
from sdgate.core.samplers import AUTOMATIC, get_sampler, get_scheduler

if TYPE_CHECKING:
    from PIL.Image import Image


@dataclass(frozen=True)
class JobShape:
    """Size and steps of one job after the model's defaults filled the gaps."""

    width: int
    height: int
    steps: int


def resolve_shape(request: GenerationRequest, defaults: ModelDefaults) -> JobShape:
    """Fill size/steps from the model and check the size against its VAE factor (not a fixed 8)."""
    width = request.width or defaults.width
    height = request.height or defaults.height
    steps = request.steps or defaults.steps
    factor = defaults.vae_scale_factor
    for name, value in (("width", width), ("height", height)):
        if value <= 0 or value % factor:
            raise InvalidRequest(
                f"{name} must be a positive multiple of {factor} for model {defaults.name} (got {value})",
                field=name,
            )
    if steps <= 0:
        raise InvalidRequest(f"steps must be positive (got {steps})", field="steps")
    return JobShape(width, height, steps)


def infotext_params(
    request: GenerationRequest,
    shape: JobShape,
    *,
    seed: int,
    subseed: int,
    schedule_label: str,
    model_name: str,
    model_hash: str | None,
    notes: list[str] | tuple[str, ...] = (),
) -> dict[str, object]:
    """The A1111 infotext parameters of one image, in A1111's spelling (None values are left out)."""
    sampler = get_sampler(request.sampler) if _known_sampler(request.sampler) else None
    variation = request.subseed_strength > 0
    return {
        "Steps": shape.steps,
        "Sampler": request.sampler,
        "Schedule type": schedule_label,
        "CFG scale": request.cfg_scale,
        "Seed": seed,
        "Size": f"{shape.width}x{shape.height}",
        "Model hash": model_hash,
        "Model": model_name,
        "Variation seed": subseed if variation else None,
        "Variation seed strength": request.subseed_strength if variation else None,
        "Seed resize from": _seed_resize(request),
        "Clip skip": request.clip_skip if request.clip_skip > 1 else None,
        "ENSD": request.eta_noise_seed_delta
        if request.eta_noise_seed_delta and sampler is not None and sampler.uses_ensd
        else None,
        "Tiling": "True" if request.tiling else None,
        "Sampler note": "; ".join(notes) or None,
        "Version": A1111_VERSION,
    }


def _seed_resize(request: GenerationRequest) -> str | None:
    w, h = request.seed_resize_from_w, request.seed_resize_from_h
    return f"{w}x{h}" if w > 0 and h > 0 else None


def concrete_schedule(sampler: str, schedule: str) -> str:
    """ "automatic" -> the sampler's A1111 default (Karras for DPM++ 2M, ...), where it has one."""
    if schedule == AUTOMATIC and _known_sampler(sampler):
        return get_sampler(sampler).default_scheduler or AUTOMATIC
    return schedule


def schedule_label(schedule: str) -> str:
    """What the infotext's "Schedule type" shows ("Karras"); an unknown name as it is."""
    try:
        return get_scheduler(schedule).label
    except KeyError:
        return schedule


def _known_sampler(name: str) -> bool:
    try:
        get_sampler(name)
    except KeyError:
        return False
    return True


def infotext(request: GenerationRequest, params: dict[str, object]) -> str:
    return format_infotext(request.prompt, request.negative_prompt, params)


class StepTracker:
    """Turns a loop's raw progress into exactly ``steps`` reports and remembers the answer.

    A second-order sampler calls back ~2x per step and PLMS once more than asked: reports are
    only sent when the A1111 step number advances, so ``control`` sees steps 1..N once each.
    """

    def __init__(self, control: GenerationControl, iteration: int, iterations: int, steps: int) -> None:
        self.control = control
        self.iteration = iteration
        self.iterations = iterations
        self.steps = steps
        self.action = StepAction.CONTINUE
        self._reported = 0

    def advance(self, done: int, total: int, preview: Callable[[], Image] | None = None) -> StepAction:
        """``done`` of ``total`` loop iterations are finished; returns what the control said."""
        step = min(self.steps, -(-done * self.steps // total))  # ceil
        if step <= self._reported or self.action != StepAction.CONTINUE:
            return self.action
        self._reported = step
        self.action = self.control.on_step(
            StepReport(self.iteration, self.iterations, step, self.steps, preview)
        )
        if self.action == StepAction.CANCEL:
            raise JobCancelled("the job was cancelled")
        return self.action
