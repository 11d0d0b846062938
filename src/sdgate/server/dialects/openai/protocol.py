"""OpenAI Images API wire models (``/v1/images/*``, ``/v1/models``).

Documented extensions (OpenAI has no such fields; LocalAI and others take some of them):
``negative_prompt``, ``steps`` (LocalAI's ``step`` too), ``seed``, ``cfg_scale``, ``sampler``,
``scheduler``, and ``strength`` on edits and variations. Unknown fields are accepted and logged once.

Numbers are strict and bounded (``n: "2"`` and ``seed: false`` are refused, as OpenAI refuses them);
``size`` is ``auto`` or ``WxH`` with both sides multiples of 16 from 64 to 2048 (OpenAI's newest
models take any size divisible by 16; every documented size is one of them).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, Field

from sdgate.core.samplers import SAMPLERS, SCHEDULERS
from sdgate.server.wire import MAX_JSON_INT, NO_NUL, Float, Int, WireModel

ResponseFormat = Literal["url", "b64_json"]
OutputFormat = Literal["png", "jpeg", "webp"]


MAX_PROMPT = 32000  # GPT image models' limit (dall-e-2: 1000, dall-e-3: 4000)
_SIDES = "|".join(str(side) for side in range(64, 2049, 16))
SIZE_PATTERN = f"^(auto|({_SIDES})x({_SIDES}))$"
# A1111's names as the schema lists them; any case and "<sampler> <schedule>" names work too.
SAMPLER_NAMES = sorted({name for s in SAMPLERS for name in (s.name, *s.aliases)})
SCHEDULER_NAMES = sorted({name for s in SCHEDULERS for name in (s.name, s.label)})
Quality = Literal["standard", "hd", "low", "medium", "high", "auto"]


def _bool_only(value: object) -> object:
    """``stream: 0`` is not ``false`` (a Literal alone would take it)."""
    return value if isinstance(value, bool) or value is None else str(value)


class Extensions(WireModel):
    negative_prompt: str = Field("", max_length=MAX_PROMPT, pattern=NO_NUL)
    steps: Int | None = Field(None, ge=1, le=150)
    step: Int | None = Field(None, ge=1, le=150)  # LocalAI's spelling
    seed: Int | None = Field(None, ge=-1, le=MAX_JSON_INT, description="-1 or left out: random")
    cfg_scale: Float | None = Field(None, ge=0, le=35)
    sampler: str | None = Field(None, max_length=64, json_schema_extra={"enum": SAMPLER_NAMES})
    scheduler: str | None = Field(None, max_length=64, json_schema_extra={"enum": SCHEDULER_NAMES})


class ImageGenerationRequest(Extensions):
    prompt: str = Field(min_length=1, max_length=MAX_PROMPT, pattern=NO_NUL)
    model: str | None = Field(None, max_length=256)
    n: Int = Field(1, ge=1, le=10)
    size: str | None = Field(None, pattern=SIZE_PATTERN)
    quality: Quality | None = None
    response_format: ResponseFormat | None = None
    style: Literal["vivid", "natural"] | None = None
    user: str | None = Field(None, max_length=256)
    output_format: OutputFormat | None = None
    output_compression: Int | None = Field(None, ge=0, le=100)
    background: Literal["transparent", "opaque", "auto"] | None = None
    moderation: Literal["low", "auto"] | None = None
    stream: Annotated[Literal[False], BeforeValidator(_bool_only)] | None = Field(
        None, description="streaming partial images is not supported"
    )
    partial_images: Int | None = Field(None, ge=0, le=3)


class ImageEditParams(ImageGenerationRequest):
    """The text fields of ``/v1/images/edits`` (``image`` / ``image[]`` and ``mask`` are files)."""

    strength: Float | None = Field(None, ge=0, le=1)
    input_fidelity: Literal["high", "low"] | None = None


class ImageVariationParams(Extensions):
    model: str | None = Field(None, max_length=256)
    n: Int = Field(1, ge=1, le=10)
    size: str | None = Field(None, pattern=SIZE_PATTERN)
    response_format: ResponseFormat | None = None
    user: str | None = Field(None, max_length=256)
    prompt: str = Field("", max_length=MAX_PROMPT, pattern=NO_NUL)  # an extension: OpenAI has none
    strength: Float | None = Field(None, ge=0, le=1)


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class OpenAIError(BaseModel):
    error: ErrorDetail


class ImageData(BaseModel):
    url: str | None = None
    b64_json: str | None = None
    revised_prompt: str | None = None


class ImagesResponse(BaseModel):
    created: int
    data: list[ImageData]
    output_format: OutputFormat | None = None  # GPT image models echo it


class ModelObject(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelObject]
