"""Wire models of the native job API (``/api/v1``). These names are a contract: the SDK and the web
UI rely on them.

One flat request schema covers txt2img, img2img and inpaint: every field of ``GenerationRequest``
under its own name, images as base64 (or ``data:`` URIs) or as ids from ``POST /api/v1/uploads``,
plus the job's own fields (``priority``, ``callback_url``, ``metadata``). Unknown fields are
refused (422 naming the field): this API is ours, and a typo should not silently do nothing.
"""

from __future__ import annotations

import functools
from datetime import datetime
from types import UnionType
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationInfo,
    field_validator,
)

from sdgate.core.jobs import JobState
from sdgate.core.requests import MAX_SEED, ControlMode, ControlResize, Mode
from sdgate.server.bodies import ErrorOut

MAX_PRIORITY = 1000
# Hard ceilings the schema states. The server's settings may set lower limits (max_side,
# max_pixels, max_steps, max_batch_images, max_metadata_bytes, the prompt's bytes): a request over
# one of those is a 400 naming the field and the limit.
MAX_SIDE = 16384
MAX_STEPS = 10000
MAX_BATCH = 1000
MAX_PROMPT_CHARS = 1 << 20
MAX_NAME_CHARS = 1024
MAX_IMAGE_CHARS = 96 << 20  # base64: more than any body the server takes (max_body_bytes) holds
# Every VAE downsamples by a multiple of 8 (SD: 8; the demo model: 16); the model's own factor is
# checked when the job is submitted (GET /api/v1/models lists each model's vae_scale_factor).
MIN_SIZE_FACTOR = 8
METADATA_KEYS = 64
METADATA_ITEMS = 64

# No surprising coercion: JSON ``false`` is not 0, ``"5"`` is not 5, ``1`` is not ``true``
# (``_Strict`` refuses a bool or a string for an integer field; 1.0 stays JSON Schema's integer 1).
_Float = Annotated[float, Field(strict=True)]
_Bool = Annotated[bool, Field(strict=True)]
_Name = Annotated[str, Field(max_length=MAX_NAME_CHARS)]
# Bounded types for nullable fields: constraints on ``X | None`` itself would not reach the schema.
_Size = Annotated[int, Field(ge=MIN_SIZE_FACTOR, le=MAX_SIDE, multiple_of=MIN_SIZE_FACTOR)]
_Steps = Annotated[int, Field(ge=1, le=MAX_STEPS)]
_SeedIn = Annotated[int, Field(ge=-1, le=MAX_SEED)]
_Fraction = Annotated[_Float, Field(ge=0.0, le=1.0)]
_Open01 = Annotated[_Float, Field(gt=0.0, lt=1.0)]
_Scale = Annotated[_Float, Field(ge=0.0, le=100.0)]
_Sigma = Annotated[_Float, Field(ge=0.0, le=1000.0)]
_Noise = Annotated[_Float, Field(ge=0.0, le=10.0)]
_SEED_DOC = "-1 or null: random (the drawn seed is stored)"

# ``metadata``: JSON values nested at most four levels (an object of objects of lists of scalars),
# bounded in keys and items; its size as JSON is bounded by the server's max_metadata_bytes.
_MetaKey = Annotated[str, StringConstraints(max_length=256)]
_MetaScalar = str | int | _Float | _Bool | None
_Meta1 = _MetaScalar | Annotated[list[_MetaScalar], Field(max_length=METADATA_ITEMS)] | Annotated[
    dict[_MetaKey, _MetaScalar], Field(max_length=METADATA_KEYS)
]
_Meta2 = _MetaScalar | Annotated[list[_Meta1], Field(max_length=METADATA_ITEMS)] | Annotated[
    dict[_MetaKey, _Meta1], Field(max_length=METADATA_KEYS)
]
_Meta3 = _MetaScalar | Annotated[list[_Meta2], Field(max_length=METADATA_ITEMS)] | Annotated[
    dict[_MetaKey, _Meta2], Field(max_length=METADATA_KEYS)
]
METADATA_DEPTH = 4


def _shallow(value: Any) -> Any:
    """Refuses JSON nested deeper than ``METADATA_DEPTH`` before anything walks it (iteratively:
    no recursion), with one error naming ``metadata`` rather than one per union member."""
    todo = [(value, 0)]
    while todo:
        item, depth = todo.pop()
        if isinstance(item, dict | list):
            if depth >= METADATA_DEPTH:
                raise ValueError(f"nested deeper than {METADATA_DEPTH} levels")
            todo += [(v, depth + 1) for v in (item.values() if isinstance(item, dict) else item)]
    return value


Metadata = Annotated[dict[_MetaKey, _Meta3], Field(max_length=METADATA_KEYS), BeforeValidator(_shallow)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _json_integer(cls, value: Any, info: ValidationInfo) -> Any:
        """JSON Schema's integer: ``1`` and ``1.0``, never ``false`` or ``"1"``."""
        if isinstance(value, bool | str | bytes) and info.field_name in _integer_fields(cls):
            raise ValueError(f"must be an integer, not {type(value).__name__}")
        return value


@functools.cache
def _integer_fields(model: type[BaseModel]) -> frozenset[str]:
    return frozenset(name for name, field in model.model_fields.items() if _is_integer(field.annotation))


def _is_integer(annotation: Any) -> bool:
    """``int``, ``Annotated[int, ...]`` or either ``| None``."""
    if annotation is int:
        return True
    args = get_args(annotation)
    if get_origin(annotation) is Annotated:
        return _is_integer(args[0])
    return get_origin(annotation) in (Union, UnionType) and any(_is_integer(a) for a in args)


class LoraIn(_Strict):
    name: _Name
    te_weight: _Float = Field(1.0, ge=-10.0, le=10.0)
    unet_weight: _Float = Field(1.0, ge=-10.0, le=10.0)


class HiresIn(_Strict):
    """The second pass: ``resize_x``/``resize_y`` (0: ``scale`` times the first size) within the
    server's size limits; ``second_pass_steps`` 0: the first pass's steps."""

    scale: _Float = Field(2.0, ge=1.0, le=8.0)
    resize_x: int = Field(0, ge=0, le=MAX_SIDE)
    resize_y: int = Field(0, ge=0, le=MAX_SIDE)
    upscaler: _Name = "Latent"
    second_pass_steps: int = Field(0, ge=0, le=MAX_STEPS)
    denoising_strength: _Float = Field(0.7, ge=0.0, le=1.0)
    sampler: _Name | None = None
    scheduler: _Name | None = None
    prompt: str = Field("", max_length=MAX_PROMPT_CHARS)
    negative_prompt: str = Field("", max_length=MAX_PROMPT_CHARS)
    checkpoint: _Name | None = Field(None, description="the second pass's model; null: same")


MAX_CONTROLNETS = 16  # the schema's ceiling; the server's max_controlnets (default 4) is checked too


class ControlNetIn(_Strict):
    """One ControlNet unit: a model this server has, its control image, the preprocessor run on
    that image first, and how strongly and when it guides."""

    model: _Name = Field(description="a ControlNet this server has (GET /api/v1/controlnets); "
                         "the ' [hash]' suffix is optional")
    image: str | None = Field(None, max_length=MAX_IMAGE_CHARS, description="base64, a data: URI, or an "
                              "upload id (img_...); null: the init image (img2img and inpaint only)")
    mask: str | None = Field(None, max_length=MAX_IMAGE_CHARS,
                             description="where this unit guides (white); base64, data: URI or upload id")
    module: _Name = Field("none", description="the preprocessor run on the image first "
                          "(GET /api/v1/controlnet/preprocessors); none: the image already is a control map")
    weight: _Float = Field(1.0, ge=0.0, le=2.0)
    guidance_start: _Fraction = Field(0.0, description="the share of the steps before it starts guiding")
    guidance_end: _Fraction = Field(1.0, description="... after which it stops; at least guidance_start")
    control_mode: ControlMode = ControlMode.BALANCED
    resize_mode: ControlResize = ControlResize.CROP_AND_RESIZE
    processor_res: int = Field(512, ge=64, le=2048, description="the preprocessor's working resolution")
    threshold_a: _Float | None = Field(None, ge=0.0, le=10000.0,
                                       description="the preprocessor's first parameter; null: its default")
    threshold_b: _Float | None = Field(None, ge=0.0, le=10000.0,
                                       description="its second parameter; null: its default")
    pixel_perfect: _Bool = Field(False, description="processor_res from the generation's size instead")


_SIZE_DOC = (
    f"a multiple of the model's VAE factor (at least {MIN_SIZE_FACTOR}: GET /api/v1/models lists "
    "vae_scale_factor), within the server's max_side and max_pixels; null: the model's own"
)


class JobCreate(_Strict):
    """``POST /api/v1/jobs``. Leave ``width``/``height``/``steps`` out (or null) for the model's own
    defaults. ``mode`` is inferred when left out: a ``mask`` means inpaint, an init image img2img.
    The bounds stated here are hard ceilings; the server's own limits may be lower (a 400 naming
    the field and the limit)."""

    prompt: str = Field("", max_length=MAX_PROMPT_CHARS)
    negative_prompt: str = Field("", max_length=MAX_PROMPT_CHARS)
    model: _Name | None = Field(None, description="from GET /api/v1/models; null: default")
    mode: Mode | None = None
    width: _Size | None = Field(None, description=_SIZE_DOC)
    height: _Size | None = Field(None, description=_SIZE_DOC)
    steps: _Steps | None = Field(None, description="within the server's max_steps")
    cfg_scale: _Float = Field(7.0, ge=0.0, le=100.0)
    sampler: _Name | None = Field(
        None, description="an A1111 sampler name (GET /api/v1/samplers); null: Euler"
    )
    scheduler: _Name | None = Field(None, description="karras, exponential, ...; null: the sampler's default")
    seed: _SeedIn | None = Field(-1, description=_SEED_DOC)
    subseed: _SeedIn | None = Field(-1, description=_SEED_DOC)
    subseed_strength: _Float = Field(0.0, ge=0.0, le=1.0)
    seed_resize_from_w: int = Field(0, ge=0, le=MAX_SIDE)
    seed_resize_from_h: int = Field(0, ge=0, le=MAX_SIDE)
    batch_size: int = Field(
        1, ge=1, le=MAX_BATCH, description="batch_size x n_iter: within the server's max_batch_images"
    )
    n_iter: int = Field(1, ge=1, le=MAX_BATCH)
    clip_skip: int = Field(1, ge=1, le=12)
    tiling: _Bool = False
    eta: _Noise | None = None
    s_churn: _Scale | None = None
    s_tmin: _Sigma | None = None
    s_tmax: _Sigma | None = None
    s_noise: _Noise | None = None
    s_min_uncond: _Float = Field(
        0.0, ge=0.0, le=100.0,
        description="NGMS: below this sigma, every other step skips the negative prompt",
    )
    eta_noise_seed_delta: int = Field(0, ge=0, le=MAX_SEED)
    # img2img / inpaint
    init_image: str | None = Field(None, max_length=MAX_IMAGE_CHARS,
                                   description="base64, a data: URI, or an upload id (img_...)")
    init_images: list[Annotated[str, Field(max_length=MAX_IMAGE_CHARS)]] | None = Field(
        None, max_length=16, description="several init images"
    )
    mask: str | None = Field(None, max_length=MAX_IMAGE_CHARS,
                             description="base64, a data: URI, or an upload id; white = repaint")
    denoising_strength: _Fraction | None = None
    resize_mode: int = Field(0, ge=0, le=3)
    image_cfg_scale: _Scale | None = None
    mask_blur_x: int = Field(4, ge=0, le=256)
    mask_blur_y: int = Field(4, ge=0, le=256)
    inpainting_fill: int = Field(1, ge=0, le=3)
    inpaint_full_res: _Bool = False
    inpaint_full_res_padding: int = Field(32, ge=0, le=4096)
    inpainting_mask_invert: _Bool = False
    mask_round: _Bool = Field(True, description="false: the blurred mask stays soft in the latent blend")
    initial_noise_multiplier: _Float = Field(1.0, ge=0.0, le=10.0)
    # extras
    hires: HiresIn | None = None
    loras: list[LoraIn] = Field(default_factory=list, max_length=32)
    vae: _Name | None = None
    styles: list[_Name] = Field(default_factory=list, max_length=64)
    refiner: _Name | None = Field(None, description="a model to finish sampling on")
    refiner_switch_at: _Open01 | None = Field(
        None, description="the share of the steps run before switching to the refiner"
    )
    restore_faces: _Name | None = Field(
        None, description="a face restorer run on each image (CodeFormer, GFPGAN, RestoreFormer: "
        "one installed on the server, else a 404); null: none"
    )
    controlnets: list[ControlNetIn] = Field(
        default_factory=list, max_length=MAX_CONTROLNETS,
        description="ControlNet units, applied in order (multi-ControlNet); at most the server's "
        "max_controlnets",
    )
    # the job
    priority: int = Field(0, ge=-MAX_PRIORITY, le=MAX_PRIORITY, description="higher runs first")
    callback_url: str | None = Field(
        None, max_length=2048, description="POSTed the job, signed, when it ends"
    )
    metadata: Metadata = Field(
        default_factory=dict,
        description="yours; returned as sent. JSON nested at most 4 levels, its size within the "
        "server's max_metadata_bytes",
    )


class ProgressOut(BaseModel):
    step: int = Field(description="steps done, over all iterations")
    total: int
    eta_s: float | None = None
    fraction: float
    iteration: int
    iterations: int


class ImageOut(BaseModel):
    id: str
    url: str
    seed: int
    subseed: int
    width: int
    height: int
    infotext: str
    filtered: bool = Field(
        False, description="the content filter's safety checker refused it: the file is a black image"
    )
    data: str | None = Field(
        None, description="the image file, base64; only with ?include=images (else null: fetch url)"
    )


class ResultOut(BaseModel):
    images: list[ImageOut]
    model: str
    sampler: str
    scheduler: str
    width: int
    height: int
    steps: int
    interrupted: bool
    notes: list[str]
    timings: dict[str, float]


class WebhookOut(BaseModel):
    url: str
    state: Literal["pending", "delivered", "failed"]
    attempts: int
    last_status: int | None = None
    last_error: str | None = None
    delivered_at: str | None = None
    log: list[dict[str, Any]] = Field(default_factory=list, description="every attempt: at, status, error")


class JobLinks(BaseModel):
    self: str
    events: str
    cancel: str


class JobOut(BaseModel):
    id: str
    state: JobState
    position: int | None = Field(None, description="0: next to run; null unless queued")
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    priority: int
    attempts: int
    metadata: dict[str, Any]
    request: dict[str, Any] = Field(description="the request as it runs: seeds drawn, names canonical")
    progress: ProgressOut | None = None
    result: ResultOut | None = None
    error: ErrorOut | None = None
    webhook: WebhookOut | None = None
    links: JobLinks


class JobPage(BaseModel):
    jobs: list[JobOut]
    next_cursor: str | None = Field(None, description="pass as ?cursor= for the next page")


class UploadOut(BaseModel):
    id: str
    url: str
    content_type: str
    width: int
    height: int
    size: int


class ModelOut(BaseModel):
    name: str
    title: str
    family: str | None
    format: str
    default: bool
    width: int
    height: int
    steps: int
    vae_scale_factor: int


class LoraOut(BaseModel):
    name: str = Field(description="the file stem: what <lora:NAME:w> and loras[].name take")
    alias: str = Field(description="the metadata's ss_output_name (also accepted), else the stem")


class VaeOut(BaseModel):
    name: str = Field(description="what vae takes (also its stem); Automatic and None are always valid")


class StyleOut(BaseModel):
    name: str
    prompt: str
    negative_prompt: str


class SamplerOut(BaseModel):
    name: str
    aliases: list[str]


class SchedulerOut(BaseModel):
    name: str
    label: str


class QueueOut(BaseModel):
    depth: int = Field(description="jobs waiting")
    running: list[str] = Field(description="ids of the jobs running now")
    workers: int
    eta_s: float | None = Field(None, description="rough time until the queue is empty")
