"""Wire models of the native job API (``/api/v1``). These names are a contract: the SDK and the web
UI rely on them.

One flat request schema covers txt2img, img2img and inpaint: every field of ``GenerationRequest``
under its own name, images as base64 (or ``data:`` URIs) or as ids from ``POST /api/v1/uploads``,
plus the job's own fields (``priority``, ``callback_url``, ``metadata``). Unknown fields are
refused (422 naming the field): this API is ours, and a typo should not silently do nothing.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from sdgate.core.jobs import JobState
from sdgate.core.requests import MAX_SEED, Mode

MAX_PRIORITY = 1000
_Seed = Field(default=-1, ge=-1, le=MAX_SEED, description="-1 or null: random (the drawn seed is stored)")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class LoraIn(_Strict):
    name: str = Field(max_length=255)
    te_weight: float = 1.0
    unet_weight: float = 1.0


class HiresIn(_Strict):
    scale: float = 2.0
    resize_x: int = Field(0, ge=0, le=65536)
    resize_y: int = Field(0, ge=0, le=65536)
    upscaler: str = "Latent"
    second_pass_steps: int = Field(0, ge=0, le=10000)
    denoising_strength: float = Field(0.7, ge=0.0, le=1.0)
    sampler: str | None = None
    scheduler: str | None = None
    prompt: str = ""
    negative_prompt: str = ""
    checkpoint: str | None = Field(None, max_length=1024, description="the second pass's model; null: same")


class JobCreate(_Strict):
    """``POST /api/v1/jobs``. Leave ``width``/``height``/``steps`` out (or null) for the model's own
    defaults. ``mode`` is inferred when left out: a ``mask`` means inpaint, an init image img2img."""

    prompt: str = ""
    negative_prompt: str = ""
    model: str | None = Field(None, max_length=1024, description="from GET /api/v1/models; null: default")
    mode: Mode | None = None
    width: int | None = Field(None, ge=1, le=1 << 20)
    height: int | None = Field(None, ge=1, le=1 << 20)
    steps: int | None = Field(None, ge=1, le=1 << 20)
    cfg_scale: float = 7.0
    sampler: str | None = Field(None, description="an A1111 sampler name (GET /api/v1/samplers); null: Euler")
    scheduler: str | None = Field(None, description="karras, exponential, ...; null: the sampler's default")
    seed: int | None = _Seed
    subseed: int | None = _Seed
    subseed_strength: float = Field(0.0, ge=0.0, le=1.0)
    seed_resize_from_w: int = Field(0, ge=0, le=65536)
    seed_resize_from_h: int = Field(0, ge=0, le=65536)
    batch_size: int = Field(1, ge=1, le=1 << 20)
    n_iter: int = Field(1, ge=1, le=1 << 20)
    clip_skip: int = Field(1, ge=1, le=12)
    tiling: bool = False
    eta: float | None = None
    s_churn: float | None = None
    s_tmin: float | None = None
    s_tmax: float | None = None
    s_noise: float | None = None
    s_min_uncond: float = Field(
        0.0, ge=0.0, description="NGMS: below this sigma, every other step skips the negative prompt"
    )
    eta_noise_seed_delta: int = Field(0, ge=0, le=MAX_SEED)
    # img2img / inpaint
    init_image: str | None = Field(None, description="base64, a data: URI, or an upload id (img_...)")
    init_images: list[str] | None = Field(None, max_length=16, description="several init images")
    mask: str | None = Field(None, description="base64, a data: URI, or an upload id; white = repaint")
    denoising_strength: float | None = Field(None, ge=0.0, le=1.0)
    resize_mode: int = Field(0, ge=0, le=3)
    image_cfg_scale: float | None = None
    mask_blur_x: int = Field(4, ge=0, le=256)
    mask_blur_y: int = Field(4, ge=0, le=256)
    inpainting_fill: int = Field(1, ge=0, le=3)
    inpaint_full_res: bool = False
    inpaint_full_res_padding: int = Field(32, ge=0, le=4096)
    inpainting_mask_invert: bool = False
    mask_round: bool = Field(True, description="false: the blurred mask stays soft in the latent blend")
    initial_noise_multiplier: float = 1.0
    # extras
    hires: HiresIn | None = None
    loras: list[LoraIn] = Field(default_factory=list, max_length=32)
    vae: str | None = Field(None, max_length=1024)
    styles: list[str] = Field(default_factory=list, max_length=64)
    refiner: str | None = Field(None, max_length=1024, description="a model to finish sampling on")
    refiner_switch_at: float | None = Field(
        None, gt=0.0, lt=1.0, description="the share of the steps run before switching to the refiner"
    )
    # the job
    priority: int = Field(0, ge=-MAX_PRIORITY, le=MAX_PRIORITY, description="higher runs first")
    callback_url: str | None = Field(None, description="POSTed the job, signed, when it ends")
    metadata: dict[str, Any] = Field(default_factory=dict, description="yours; returned as sent")


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


class ErrorOut(BaseModel):
    code: str
    message: str
    field: str | None = None


class ErrorBody(BaseModel):
    """Every native error: ``{"error": {"code", "message", "field"?}}``."""

    error: ErrorOut


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
