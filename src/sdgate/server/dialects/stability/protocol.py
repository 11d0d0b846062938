"""Stability AI REST wire models: v1 (``/v1/generation/...``) and v2beta (``/v2beta/stable-image/...``).

Limits are the 2023 v1 spec's, which is the more lenient of the two published (steps up to 150);
where the service documents none (prompt weights, how many prompts, the largest side) sdgate states
its own. Numbers are strict and finite (``seed: false`` and a NaN weight are 400s, not 0 and a
negative prompt). Unknown fields are accepted and logged once, as the service ignores them.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, Field

from sdgate.server.wire import NO_NUL, Float, Int, WireModel

MAX_SEED_V1 = 4294967295
MAX_SEED_V2 = 4294967294
MAX_PROMPTS = 32  # text_prompts items: the service states no limit
MAX_WEIGHT = 10.0  # |weight| of a prompt: the service states no limit; beyond this attention is noise
MAX_SIDE_V1 = 2048  # width/height: 2048x2048 is sdgate's default pixel limit (the service's is lower)
SIZE_STEP_V1 = 64


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


_Lenient = WireModel


class TextPrompt(_Lenient):
    text: str = Field(max_length=2000, pattern=NO_NUL)
    weight: Float = Field(1.0, ge=-MAX_WEIGHT, le=MAX_WEIGHT, description="negative: a negative prompt")


class GenerationParams(_Lenient):
    """``GenerationRequestOptionalParams`` plus ``text_prompts``."""

    text_prompts: list[TextPrompt] = Field(min_length=1, max_length=MAX_PROMPTS)
    cfg_scale: Float = Field(7.0, ge=0, le=35)
    clip_guidance_preset: ClipGuidancePreset = ClipGuidancePreset.NONE
    sampler: Sampler | None = None
    samples: Int = Field(1, ge=1, le=10)
    seed: Int = Field(0, ge=0, le=MAX_SEED_V1, description="0: random")
    steps: Int | None = Field(None, ge=10, le=150)
    style_preset: StylePreset | None = None
    extras: dict[str, Any] | None = None


class TextToImageRequest(GenerationParams):
    height: Int | None = Field(None, ge=128, le=MAX_SIDE_V1, multiple_of=SIZE_STEP_V1)
    width: Int | None = Field(None, ge=128, le=MAX_SIDE_V1, multiple_of=SIZE_STEP_V1)


class ImageToImageParams(GenerationParams):
    """The form fields of image-to-image (the ``init_image`` file is read separately)."""

    init_image_mode: InitImageMode = InitImageMode.IMAGE_STRENGTH
    image_strength: Float = Field(0.35, ge=0, le=1)
    step_schedule_start: Float = Field(0.65, ge=0, le=1)
    step_schedule_end: Float | None = Field(None, ge=0, le=1)


class MaskingParams(GenerationParams):
    mask_source: MaskSource
    init_image_mode: InitImageMode | None = None
    image_strength: Float | None = Field(None, ge=0, le=1)
    step_schedule_start: Float | None = Field(None, ge=0, le=1)
    step_schedule_end: Float | None = Field(None, ge=0, le=1)


UPSCALE_MAX_PIXELS = 4_194_304


class UpscaleParams(_Lenient):
    """At most one of ``width`` / ``height``; the output may hold at most 4194304 pixels (2048 a
    side for a square image)."""

    width: Int | None = Field(None, ge=512, le=2048)
    height: Int | None = Field(None, ge=512, le=2048)
    text_prompts: list[TextPrompt] = Field(default_factory=list, max_length=MAX_PROMPTS)
    cfg_scale: Float = Field(7.0, ge=0, le=35)
    seed: Int = Field(0, ge=0, le=MAX_SEED_V1)
    steps: Int | None = Field(None, ge=10, le=150)


class V1Error(BaseModel):
    """Every v1 error: ``name`` is a short code (``bad_request``, ``invalid_samples``, ``not_found``...)."""

    id: str
    name: str
    message: str


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

    prompt: str = Field(min_length=1, max_length=10000, pattern=NO_NUL)
    negative_prompt: str = Field("", max_length=10000, pattern=NO_NUL)
    aspect_ratio: AspectRatio = AspectRatio.R1_1
    seed: Int = Field(0, ge=0, le=MAX_SEED_V2, description="0: random")
    output_format: OutputFormat = OutputFormat.PNG
    style_preset: StylePreset | None = None
    strength: Float | None = Field(None, ge=0, le=1, description="required with an image")
    mode: Literal["text-to-image", "image-to-image"] = "text-to-image"
    model: str | None = Field(None, max_length=200)
    cfg_scale: Float | None = Field(None, ge=1, le=10)


class ControlParams(_Lenient):
    """The form fields of ``/v2beta/stable-image/control/{sketch,structure}`` (the ``image`` file,
    required, is read separately)."""

    prompt: str = Field(min_length=1, max_length=10000, pattern=NO_NUL)
    control_strength: Float = Field(0.7, ge=0, le=1, description="how much the image guides the generation")
    negative_prompt: str = Field("", max_length=10000, pattern=NO_NUL)
    seed: Int = Field(0, ge=0, le=MAX_SEED_V2, description="0: random")
    output_format: OutputFormat = OutputFormat.PNG
    style_preset: StylePreset | None = None


class V2Error(BaseModel):
    id: str
    name: str
    errors: list[str]


class StableImageJson(BaseModel):
    image: str
    finish_reason: str
    seed: int
