"""OpenAI Images API wire models (``/v1/images/*``, ``/v1/models``).

Documented extensions (OpenAI has no such fields; LocalAI and others take some of them):
``negative_prompt``, ``steps`` (LocalAI's ``step`` too), ``seed``, ``cfg_scale``, ``sampler``,
``scheduler``, and ``strength`` on edits and variations. Unknown fields are accepted and logged once.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

ResponseFormat = Literal["url", "b64_json"]
OutputFormat = Literal["png", "jpeg", "webp"]


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="allow")


class Extensions(_Lenient):
    negative_prompt: str = ""
    steps: int | None = Field(None, ge=1)
    step: int | None = Field(None, ge=1)  # LocalAI's spelling
    seed: int | None = Field(None, ge=-1)
    cfg_scale: float | None = None
    sampler: str | None = None
    scheduler: str | None = None


class ImageGenerationRequest(Extensions):
    prompt: str = Field(min_length=1, max_length=32000)
    model: str | None = None
    n: int = Field(1, ge=1, le=10)
    size: str | None = None
    quality: str | None = None
    response_format: ResponseFormat | None = None
    style: str | None = None
    user: str | None = None
    output_format: OutputFormat | None = None
    output_compression: int | None = Field(None, ge=0, le=100)
    background: str | None = None
    moderation: str | None = None
    stream: bool | None = None
    partial_images: int | None = None


class ImageEditParams(ImageGenerationRequest):
    """The text fields of ``/v1/images/edits`` (``image`` / ``image[]`` and ``mask`` are files)."""

    strength: float | None = Field(None, ge=0, le=1)
    input_fidelity: str | None = None


class ImageVariationParams(Extensions):
    model: str | None = None
    n: int = Field(1, ge=1, le=10)
    size: str | None = None
    response_format: ResponseFormat | None = None
    user: str | None = None
    prompt: str = ""  # an extension: variations have no prompt at OpenAI
    strength: float | None = Field(None, ge=0, le=1)


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
