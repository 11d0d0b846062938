"""AUTOMATIC1111 v1.10.1 wire models.

Every request field is optional, as in A1111 (an empty ``{}`` body is valid); the defaults are A1111's
API defaults, not its UI's (steps 50, sampler via ``sampler_index`` "Euler", denoising_strength null
for txt2img). Unknown fields are accepted and logged once (clients of extensions send many).

Every number is bounded here, where it enters, and every float is finite (NaN and Infinity are a
422 naming the field): the schema states the limits. Those that are settings (``max_side``,
``max_steps``, ``max_batch_images``, ...) are stated at their defaults, the most a server can be
configured to refuse less of being checked again against the live settings in ``translate`` and
``server.validation`` (400 naming the field), as are the limits that join two fields (pixels,
batch_size x n_iter, the size after hires fix). Types are as tolerant as A1111's pydantic v1 where
its clients rely on it (a numeric string or an integral float for an int field) but a boolean is
never a number (``seed: false`` is a 422).
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    RootModel,
    StrictBool,
    WithJsonSchema,
    field_validator,
)

from sdgate.core.requests import MAX_SEED
from sdgate.core.samplers import samplers_listing, schedulers_listing
from sdgate.server.dialects.a1111.option_schema import option_schema
from sdgate.server.dialects.a1111.option_table import SPECS, check_value
from sdgate.server.wire import JsonTree
from sdgate.settings import Settings


def _default(name: str, fallback: int) -> int:
    """A limit's default in ``Settings`` (the schema states the defaults; the live value is checked
    again when the request is translated)."""
    field = Settings.model_fields.get(name)
    return int(field.default) if field is not None and isinstance(field.default, int) else fallback


MAX_SIDE = _default("max_side", 4096)
MAX_STEPS = _default("max_steps", 1000)
MAX_BATCH_IMAGES = _default("max_batch_images", 64)
# Characters: the byte and token limits of a prompt are checked centrally (400 naming the field).
MAX_PROMPT_CHARS = _default("max_prompt_bytes", 64 * 1024)
MAX_NAME = 1024  # a sampler, scheduler, checkpoint, upscaler or style name
MAX_LIST = 64  # styles, script_args, init_images, imageList
MAX_SETTINGS = 512  # override_settings keys (A1111 has 329 options)
MAX_IMAGE_CHARS = _default("max_body_bytes", 64 * 1024 * 1024)
SIZE_STEP = 8  # the smallest VAE factor; a model with a larger one refuses other sizes (400)
MAX_CFG = 100.0
MAX_SCALE = 8.0  # hires fix and extras upscale factors


def _not_bool(value: Any) -> Any:
    if isinstance(value, bool):
        raise ValueError("must be a number, not a boolean")
    return value


# After the bounds (before them, the schema loses them): numbers as A1111's pydantic v1 took them
# ("20" and 20.0 for 20), but never a boolean.
NOT_BOOL = BeforeValidator(_not_bool)

Bool = StrictBool
Prompt = Annotated[str, Field(max_length=MAX_PROMPT_CHARS)]
Name = Annotated[str, Field(max_length=MAX_NAME)]
ImageData = Annotated[str, Field(max_length=MAX_IMAGE_CHARS)]


def _sampler_names() -> list[str]:
    """What the sampler fields document: each sampler, alone and with a schedule suffix (the pre-1.9
    names); the server also accepts aliases and any letter case, as ``resolve_sampler`` says, and
    refuses any other name (400; A1111 would silently run DPM++ 2M)."""
    samplers = [s["name"] for s in samplers_listing()]
    labels = [s["label"] for s in schedulers_listing() if s["name"] != "automatic"]
    return samplers + [f"{name} {label}" for name in samplers for label in labels]


SAMPLER_SCHEMA: dict[str, Any] = {"type": "string", "enum": ["", *_sampler_names()]}
SamplerName = Annotated[str, WithJsonSchema(SAMPLER_SCHEMA)]
# Any text: an unknown scheduler means Automatic, as in A1111 (GET /schedulers lists them).
SchedulerName = Name


def _seed_schema() -> dict[str, Any]:
    return {
        "anyOf": [
            {"type": "integer", "minimum": -1, "maximum": MAX_SEED},
            {"type": "string", "pattern": "^(-1|[0-9]{1,19})?$", "description": "a number as text"},
            {"type": "null"},
        ],
        "description": "-1, \"\" or null: random",
    }


def _seed_value(value: Any) -> Any:
    if isinstance(value, bool):
        raise ValueError("must be a number, not a boolean")
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # pydantic v1 took an integral float
    if isinstance(value, int) and not -1 <= value <= MAX_SEED:
        raise ValueError("must be -1 (random) or between 0 and 2**64-1")
    if isinstance(value, str) and value.strip() not in ("", "-1") and not (
        value.strip().isascii() and value.strip().isdigit() and int(value) <= MAX_SEED
    ):
        raise ValueError("must be -1 (random) or a whole number between 0 and 2**64-1")
    return value


Seed = Annotated[
    int | Annotated[str, Field(max_length=24)] | None,
    BeforeValidator(_seed_value),
    WithJsonSchema(_seed_schema()),
]
# -1 and 0 mean no seed resize; else a size, a multiple of the model's VAE factor.
SeedResize = Annotated[
    int,
    Field(ge=-1, le=MAX_SIDE),
    NOT_BOOL,
    WithJsonSchema({
        "anyOf": [
            {"type": "integer", "enum": [-1, 0]},
            {"type": "integer", "minimum": SIZE_STEP, "maximum": MAX_SIDE, "multipleOf": SIZE_STEP},
        ],
        "default": -1,
    }),
]  # fmt: skip
Side = Annotated[int, Field(ge=SIZE_STEP, le=MAX_SIDE, multiple_of=SIZE_STEP), NOT_BOOL]
Fraction = Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False), NOT_BOOL]
Multiplier = Annotated[float, Field(ge=0.0, le=10.0, allow_inf_nan=False), NOT_BOOL]
SamplerParam = Annotated[float, Field(ge=0.0, le=1000.0, allow_inf_nan=False), NOT_BOOL]


def _override_settings_schema() -> dict[str, Any]:
    return {
        "anyOf": [
            {
                "type": "object",
                "properties": {key: option_schema(spec) for key, spec in SPECS.items()},
                "maxProperties": MAX_SETTINGS,
            },
            {"type": "null"},
        ],
        "description": "A1111 options for this request only; each checked as POST /options checks "
        "it. Keys A1111 1.10 lacks are accepted and ignored.",
    }


_UNIT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "one ControlNet unit, with the sd-webui-controlnet extension's fields",
    "properties": {
        "enabled": {"type": "boolean", "default": True},
        "module": {"type": "string", "description": "a preprocessor (GET /controlnet/module_list)"},
        "model": {"type": "string", "description": "GET /controlnet/model_list; the [hash] is optional"},
        "weight": {"type": "number", "minimum": 0, "maximum": 2, "default": 1},
        "image": {"type": ["string", "null"], "description": "base64 or a data: URI; none: the init image"},
        "mask": {"type": ["string", "null"]},
        "resize_mode": {"anyOf": [
            {"type": "integer", "minimum": 0, "maximum": 2},
            {"type": "string", "enum": ["Just Resize", "Crop and Resize", "Resize and Fill"]},
        ]},
        "processor_res": {"type": "integer", "minimum": -1, "maximum": 2048, "default": -1},
        "threshold_a": {"type": "number", "minimum": -1, "maximum": 10000, "default": -1},
        "threshold_b": {"type": "number", "minimum": -1, "maximum": 10000, "default": -1},
        "guidance_start": {"type": "number", "minimum": 0, "maximum": 1, "default": 0},
        "guidance_end": {"type": "number", "minimum": 0, "maximum": 1, "default": 1},
        "control_mode": {"anyOf": [
            {"type": "integer", "minimum": 0, "maximum": 2},
            {"type": "string",
             "enum": ["Balanced", "My prompt is more important", "ControlNet is more important"]},
        ]},
        "pixel_perfect": {"type": "boolean", "default": False},
    },
    "required": ["model"],
}  # fmt: skip
ALWAYSON_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"controlnet": {
        "type": "object", "properties": {"args": {"type": "array", "items": _UNIT_SCHEMA}},
    }},
    "additionalProperties": False,
    "maxProperties": 1,
    "description": "always-on scripts: ControlNet's units (the key in any case, as webuiapi's ControlNet)",
}  # fmt: skip


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)


class CommonProcessing(_Lenient):
    prompt: Prompt = ""
    negative_prompt: Prompt = ""
    styles: list[Name] | None = Field(None, max_length=MAX_LIST)
    seed: Seed = -1
    subseed: Seed = -1
    subseed_strength: Fraction = 0.0
    seed_resize_from_h: SeedResize = -1
    seed_resize_from_w: SeedResize = -1
    sampler_name: SamplerName | None = None
    scheduler: SchedulerName | None = None
    batch_size: Annotated[int, Field(ge=1, le=MAX_BATCH_IMAGES), NOT_BOOL] = 1
    n_iter: Annotated[int, Field(ge=1, le=MAX_BATCH_IMAGES), NOT_BOOL] = 1
    steps: Annotated[int, Field(ge=1, le=MAX_STEPS), NOT_BOOL] = 50
    cfg_scale: Annotated[float, Field(ge=0.0, le=MAX_CFG, allow_inf_nan=False), NOT_BOOL] = 7.0
    width: Side = 512
    height: Side = 512
    restore_faces: Bool | None = None
    tiling: Bool | None = None
    do_not_save_samples: Bool = False
    do_not_save_grid: Bool = False
    eta: SamplerParam | None = None
    denoising_strength: Fraction | None = None
    s_min_uncond: SamplerParam | None = None
    s_churn: SamplerParam | None = None
    s_tmax: SamplerParam | None = None
    s_tmin: SamplerParam | None = None
    s_noise: SamplerParam | None = None
    override_settings: Annotated[
        dict[str, Any] | None, JsonTree, WithJsonSchema(_override_settings_schema())
    ] = Field(None, max_length=MAX_SETTINGS)
    override_settings_restore_afterwards: Bool = True
    refiner_checkpoint: Name | None = None
    refiner_switch_at: Fraction | None = None
    disable_extra_networks: Bool = False
    firstpass_image: ImageData | None = None
    comments: Annotated[dict[str, Any] | None, JsonTree] = Field(None, max_length=MAX_LIST)
    force_task_id: Name | None = None
    sampler_index: SamplerName = "Euler"
    script_name: Name | None = None
    script_args: Annotated[list[Any], JsonTree] = Field(default_factory=list, max_length=MAX_LIST)
    send_images: Bool = True
    save_images: Bool = False
    # The one always-on script installed is ControlNet's (its key in any case); any other key is
    # A1111's 422 "always on script ... not found". Its units are checked in ``controlnet``.
    alwayson_scripts: Annotated[
        dict[str, Any], JsonTree, WithJsonSchema(ALWAYSON_SCHEMA)
    ] = Field(default_factory=dict)
    infotext: Prompt | None = None

    @field_validator("override_settings")
    @classmethod
    def _check_override_settings(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        """Each known option as ``POST /options`` checks it (checkpoint and VAE names are looked
        up later: 404 / 400 naming them)."""
        for key, item in (value or {}).items():
            spec = SPECS.get(key)
            if spec is None or key in ("sd_model_checkpoint", "sd_vae"):
                continue
            why = check_value(spec, item)
            if why is not None:
                raise ValueError(f"{key}: {why}")
        return value


class Txt2ImgRequest(CommonProcessing):
    enable_hr: Bool = False
    firstphase_width: Annotated[int, Field(ge=0, le=MAX_SIDE, multiple_of=SIZE_STEP), NOT_BOOL] = 0
    firstphase_height: Annotated[int, Field(ge=0, le=MAX_SIDE, multiple_of=SIZE_STEP), NOT_BOOL] = 0
    hr_scale: Annotated[float, Field(ge=1.0, le=MAX_SCALE, allow_inf_nan=False), NOT_BOOL] = 2.0
    hr_upscaler: Name | None = None
    hr_second_pass_steps: Annotated[int, Field(ge=0, le=MAX_STEPS), NOT_BOOL] = 0
    hr_resize_x: Annotated[int, Field(ge=0, le=MAX_SIDE, multiple_of=SIZE_STEP), NOT_BOOL] = 0
    hr_resize_y: Annotated[int, Field(ge=0, le=MAX_SIDE, multiple_of=SIZE_STEP), NOT_BOOL] = 0
    hr_checkpoint_name: Name | None = None
    hr_sampler_name: SamplerName | None = None
    hr_scheduler: SchedulerName | None = None
    hr_prompt: Prompt = ""
    hr_negative_prompt: Prompt = ""


class Img2ImgRequest(CommonProcessing):
    denoising_strength: Fraction | None = 0.75
    init_images: list[ImageData] | None = Field(None, max_length=MAX_LIST)
    resize_mode: Annotated[int, Field(ge=0, le=3), NOT_BOOL] = 0
    image_cfg_scale: Annotated[float, Field(ge=0.0, le=MAX_CFG, allow_inf_nan=False), NOT_BOOL] | None = None
    mask: ImageData | None = None
    mask_blur_x: Annotated[int, Field(ge=0, le=256), NOT_BOOL] = 4
    mask_blur_y: Annotated[int, Field(ge=0, le=256), NOT_BOOL] = 4
    mask_blur: Annotated[int, Field(ge=0, le=256), NOT_BOOL] | None = None
    mask_round: Bool = True
    inpainting_fill: Annotated[int, Field(ge=0, le=3), NOT_BOOL] = 0
    inpaint_full_res: Bool = True
    inpaint_full_res_padding: Annotated[int, Field(ge=0, le=MAX_SIDE), NOT_BOOL] = 0
    inpainting_mask_invert: Annotated[int, Field(ge=0, le=1), NOT_BOOL] = 0
    initial_noise_multiplier: Multiplier | None = None
    latent_mask: ImageData | None = None
    include_init_images: Bool = False


class GenerationResponse(BaseModel):
    images: list[str]
    parameters: dict[str, Any]
    info: str


class ProgressState(BaseModel):
    skipped: bool = False
    interrupted: bool = False
    stopping_generation: bool = False
    job: str = ""
    job_count: int = 0
    job_timestamp: str = "0"
    job_no: int = 0
    sampling_step: int = 0
    sampling_steps: int = 0


class ProgressResponse(BaseModel):
    progress: float
    eta_relative: float
    state: ProgressState
    current_image: str | None = None
    textinfo: str | None = None


class PngInfoRequest(BaseModel):
    image: ImageData


class PngInfoResponse(BaseModel):
    info: str
    items: dict[str, Any]
    parameters: dict[str, Any]


class SamplerItem(BaseModel):
    name: str
    aliases: list[str]
    options: dict[str, str]


class SchedulerItem(BaseModel):
    name: str
    label: str
    aliases: list[str] | None = None
    default_rho: float = -1
    need_inner_model: bool = False


class SDModelItem(BaseModel):
    title: str
    model_name: str
    hash: str | None = None
    sha256: str | None = None
    filename: str
    config: str | None = None


class ExtrasBase(_Lenient):
    """A1111's ``ExtrasBaseRequest``; a face restorer with a visibility above 0 must be installed."""

    resize_mode: Annotated[int, Field(ge=0, le=1), NOT_BOOL] = 0  # 0: by upscaling_resize, 1: to _w x _h
    show_extras_results: Bool = True
    gfpgan_visibility: Fraction = 0.0
    codeformer_visibility: Fraction = 0.0
    codeformer_weight: Fraction = 0.0
    upscaling_resize: Annotated[float, Field(gt=0.0, le=MAX_SCALE, allow_inf_nan=False), NOT_BOOL] = 2.0
    upscaling_resize_w: Annotated[int, Field(ge=1, le=MAX_SIDE), NOT_BOOL] = 512
    upscaling_resize_h: Annotated[int, Field(ge=1, le=MAX_SIDE), NOT_BOOL] = 512
    upscaling_crop: Bool = True
    upscaler_1: Name = "None"
    upscaler_2: Name = "None"
    extras_upscaler_2_visibility: Fraction = 0.0
    upscale_first: Bool = False


class ExtrasSingleImageRequest(ExtrasBase):
    image: ImageData = ""


class ExtrasImageItem(BaseModel):
    data: ImageData
    name: Name = ""


class ExtrasBatchImagesRequest(ExtrasBase):
    imageList: list[ExtrasImageItem] = Field(  # noqa: N815 - A1111's spelling
        default_factory=list, max_length=MAX_BATCH_IMAGES
    )


class ExtrasSingleImageResponse(BaseModel):
    html_info: str
    image: str


class ExtrasBatchImagesResponse(BaseModel):
    html_info: str
    images: list[str]


class A1111Error(BaseModel):
    """Every error A1111's api_middleware renders (``detail`` names the field)."""

    error: str
    detail: Any
    body: Any
    errors: Any


class ValidationErrorItem(BaseModel):
    loc: list[str | int]
    msg: str
    type: str
    input: Any = None


class ValidationErrorBody(BaseModel):
    """FastAPI's own 422, which A1111 does not rewrite: ``loc`` names the field."""

    detail: list[ValidationErrorItem]


class UnprocessableBody(RootModel[ValidationErrorBody | A1111Error]):
    """A 422: a body that does not fit the schema, or one of A1111's own 422s (an unknown script)."""
