"""Stability AI REST wire models: v1 (``/v1/generation/...``) and v2beta (``/v2beta/stable-image/...``).

Limits are the 2023 v1 spec's, which is the more lenient of the two published (steps up to 150).
Unknown fields are accepted and logged once, as the service ignores them.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

MAX_SEED_V1 = 4294967295
MAX_SEED_V2 = 4294967294


class Sampler(StrEnum):
    DDIM = "DDIM"
    DDPM = "DDPM"
    K_DPMPP_2M = "K_DPMPP_2M"
    K_DPMPP_2S_ANCESTRAL = "K_DPMPP_2S_ANCESTRAL"
    K_DPM_2 = "K_DPM_2"
    K_DPM_2_ANCESTRAL = "K_DPM_2_ANCESTRAL"
    K_EULER = "K_EULER"
    K_EULER_ANCESTRAL = "K_EULER_ANCESTRAL"
    K_HEUN = "K_HEUN"
    K_LMS = "K_LMS"


class ClipGuidancePreset(StrEnum):
    FAST_BLUE = "FAST_BLUE"
    FAST_GREEN = "FAST_GREEN"
    NONE = "NONE"
    SIMPLE = "SIMPLE"
    SLOW = "SLOW"
    SLOWER = "SLOWER"
    SLOWEST = "SLOWEST"


class StylePreset(StrEnum):
    ENHANCE = "enhance"
    ANIME = "anime"
    PHOTOGRAPHIC = "photographic"
    DIGITAL_ART = "digital-art"
    COMIC_BOOK = "comic-book"
    FANTASY_ART = "fantasy-art"
    LINE_ART = "line-art"
    ANALOG_FILM = "analog-film"
    NEON_PUNK = "neon-punk"
    ISOMETRIC = "isometric"
    LOW_POLY = "low-poly"
    ORIGAMI = "origami"
    MODELING_COMPOUND = "modeling-compound"
    CINEMATIC = "cinematic"
    THREE_D_MODEL = "3d-model"
    PIXEL_ART = "pixel-art"
    TILE_TEXTURE = "tile-texture"


class InitImageMode(StrEnum):
    IMAGE_STRENGTH = "IMAGE_STRENGTH"
    STEP_SCHEDULE = "STEP_SCHEDULE"


class MaskSource(StrEnum):
    MASK_IMAGE_WHITE = "MASK_IMAGE_WHITE"
    MASK_IMAGE_BLACK = "MASK_IMAGE_BLACK"
    INIT_IMAGE_ALPHA = "INIT_IMAGE_ALPHA"


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="allow")


class TextPrompt(_Lenient):
    text: str = Field(max_length=2000)
    weight: float = 1.0


class GenerationParams(_Lenient):
    """``GenerationRequestOptionalParams`` plus ``text_prompts``."""

    text_prompts: list[TextPrompt] = Field(min_length=1)
    cfg_scale: float = Field(7.0, ge=0, le=35)
    clip_guidance_preset: ClipGuidancePreset = ClipGuidancePreset.NONE
    sampler: Sampler | None = None
    samples: int = Field(1, ge=1, le=10)
    seed: int = Field(0, ge=0, le=MAX_SEED_V1)
    steps: int | None = Field(None, ge=10, le=150)
    style_preset: StylePreset | None = None
    extras: dict[str, Any] | None = None


class TextToImageRequest(GenerationParams):
    height: int | None = Field(None, ge=128)
    width: int | None = Field(None, ge=128)


class ImageToImageParams(GenerationParams):
    """The form fields of image-to-image (the ``init_image`` file is read separately)."""

    init_image_mode: InitImageMode = InitImageMode.IMAGE_STRENGTH
    image_strength: float = Field(0.35, ge=0, le=1)
    step_schedule_start: float = Field(0.65, ge=0, le=1)
    step_schedule_end: float | None = Field(None, ge=0, le=1)


class MaskingParams(GenerationParams):
    mask_source: MaskSource
    init_image_mode: InitImageMode | None = None
    image_strength: float | None = Field(None, ge=0, le=1)
    step_schedule_start: float | None = Field(None, ge=0, le=1)
    step_schedule_end: float | None = Field(None, ge=0, le=1)


class UpscaleParams(_Lenient):
    width: int | None = Field(None, ge=512)
    height: int | None = Field(None, ge=512)
    text_prompts: list[TextPrompt] = Field(default_factory=list)
    cfg_scale: float = Field(7.0, ge=0, le=35)
    seed: int = Field(0, ge=0, le=MAX_SEED_V1)
    steps: int | None = Field(None, ge=10, le=150)


class Artifact(BaseModel):
    base64: str
    seed: int
    finishReason: str  # noqa: N815 - the wire name


class ArtifactsResponse(BaseModel):
    artifacts: list[Artifact]


class Engine(BaseModel):
    id: str
    name: str
    description: str
    type: str = "PICTURE"


# -- v2beta ----------------------------------------------------------------------------------------


class AspectRatio(StrEnum):
    R16_9 = "16:9"
    R1_1 = "1:1"
    R21_9 = "21:9"
    R2_3 = "2:3"
    R3_2 = "3:2"
    R4_5 = "4:5"
    R5_4 = "5:4"
    R9_16 = "9:16"
    R9_21 = "9:21"


class OutputFormat(StrEnum):
    JPEG = "jpeg"
    PNG = "png"
    WEBP = "webp"


class StableImageParams(_Lenient):
    """The form fields of ``/v2beta/stable-image/generate/{core,sd3,ultra}``."""

    prompt: str = Field(min_length=1, max_length=10000)
    negative_prompt: str = Field("", max_length=10000)
    aspect_ratio: AspectRatio = AspectRatio.R1_1
    seed: int = Field(0, ge=0, le=MAX_SEED_V2)
    output_format: OutputFormat = OutputFormat.PNG
    style_preset: StylePreset | None = None
    strength: float | None = Field(None, ge=0, le=1)
    mode: str = "text-to-image"
    model: str | None = None
    cfg_scale: float | None = Field(None, ge=1, le=10)


class StableImageJson(BaseModel):
    image: str
    finish_reason: str
    seed: int
