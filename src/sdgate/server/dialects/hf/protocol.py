"""Hugging Face Inference API, text-to-image task: ``{"inputs", "parameters", "options"}``.

Both spellings of the parameters are accepted: ``width``/``height`` (``huggingface_hub`` >= 0.29
and <= 0.25) and ``target_size: {width, height}`` (0.26-0.28); ``negative_prompt`` as a string or,
as the typed spec of that period had it, a list of strings. Unknown parameters (``extra_body``)
are accepted and logged once.

The service states no limits; sdgate's are: sides 64..2048 in multiples of 8 (SD's VAE factor),
1..150 steps, guidance 0..35, seeds up to 2**53-1, prompts up to 32000 characters. Numbers are
strict (``seed: false`` is refused) and finite.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, Field

from sdgate.core.samplers import SAMPLERS
from sdgate.server.wire import MAX_JSON_INT, NO_NUL, Bool, Float, Int, WireModel

MAX_PROMPT = 32000
# diffusers scheduler class names (what HF clients send as ``scheduler``) -> A1111 sampler names.
DIFFUSERS_SCHEDULERS: dict[str, tuple[str, str | None]] = {
    "EulerDiscreteScheduler": ("Euler", None),
    "EulerAncestralDiscreteScheduler": ("Euler a", None),
    "DPMSolverMultistepScheduler": ("DPM++ 2M", None),
    "DPMSolverSDEScheduler": ("DPM++ SDE", None),
    "DPMSolverSinglestepScheduler": ("DPM++ 2S a", None),
    "KDPM2DiscreteScheduler": ("DPM2", None),
    "KDPM2AncestralDiscreteScheduler": ("DPM2 a", None),
    "HeunDiscreteScheduler": ("Heun", None),
    "LMSDiscreteScheduler": ("LMS", None),
    "DDIMScheduler": ("DDIM", None),
    "PNDMScheduler": ("PLMS", None),
    "UniPCMultistepScheduler": ("UniPC", None),
    "LCMScheduler": ("LCM", None),
}
# What the schema lists for ``scheduler``: those class names and A1111's sampler names (any case works).
SCHEDULER_NAMES = sorted({*DIFFUSERS_SCHEDULERS, *(name for s in SAMPLERS for name in (s.name, *s.aliases))})
Side = Annotated[Int, Field(ge=64, le=2048, multiple_of=8)]
Prompt = Annotated[str, Field(max_length=MAX_PROMPT, pattern=NO_NUL)]


class TargetSize(WireModel):
    width: Side
    height: Side


class TextToImageParameters(WireModel):
    negative_prompt: Prompt | Annotated[list[Prompt], Field(max_length=32)] | None = None
    height: Int | None = Field(None, ge=64, le=2048, multiple_of=8)
    width: Int | None = Field(None, ge=64, le=2048, multiple_of=8)
    target_size: TargetSize | None = None
    num_inference_steps: Int | None = Field(None, ge=1, le=150)
    guidance_scale: Float | None = Field(None, ge=0, le=35)
    scheduler: str | None = Field(None, max_length=64, json_schema_extra={"enum": SCHEDULER_NAMES})
    seed: Int | None = Field(None, ge=0, le=MAX_JSON_INT)


class Options(WireModel):
    use_cache: Bool | None = None
    wait_for_model: Bool | None = None


class TextToImageRequest(WireModel):
    inputs: str = Field(min_length=1, max_length=MAX_PROMPT, pattern=NO_NUL)
    parameters: TextToImageParameters = Field(default_factory=TextToImageParameters)
    options: Options | None = None


class HfError(BaseModel):
    """``{"error": "<message>"}``."""

    error: str


class HfValidationError(BaseModel):
    """A schema error (422): one message per bad field."""

    error: list[str]
