"""The one request type every dialect translates into.

A ``GenerationRequest`` is what a job stores and what the engine runs: fully resolved (seeds are
concrete numbers, sampler and scheduler are canonical A1111 names), so a job re-run after a crash
draws the same pixels. Dialect quirks stay in the dialects.
"""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field

MAX_SEED = 2**64 - 1


class Mode(StrEnum):
    TXT2IMG = "txt2img"
    IMG2IMG = "img2img"
    INPAINT = "inpaint"


class LoraRef(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: str
    te_weight: float = 1.0
    unet_weight: float = 1.0


class HiresSettings(BaseModel):
    model_config = ConfigDict(frozen=True)

    scale: float = 2.0
    resize_x: int = 0
    resize_y: int = 0
    upscaler: str = "Latent"
    second_pass_steps: int = 0
    denoising_strength: float = 0.7
    sampler: str | None = None
    scheduler: str | None = None
    prompt: str = ""
    negative_prompt: str = ""
    checkpoint: str | None = None  # the second pass's model (a catalog name); None: the first's


class GenerationRequest(BaseModel):
    """Everything the engine needs to draw ``batch_size * n_iter`` images.

    ``width``/``height``/``steps`` of ``None`` mean "the model's own default". Images (init, mask)
    are references into the image store (``ImageStore`` ids), never raw bytes, so a job row stays
    small and every image was validated once at the edge.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    mode: Mode = Mode.TXT2IMG
    prompt: str = ""
    negative_prompt: str = ""
    model: str | None = None
    width: int | None = None
    height: int | None = None
    steps: int | None = None
    cfg_scale: float = 7.0
    sampler: str = "Euler"
    scheduler: str = "automatic"
    seed: int = Field(0, ge=0, le=MAX_SEED)
    subseed: int = Field(0, ge=0, le=MAX_SEED)
    subseed_strength: float = 0.0
    seed_resize_from_w: int = 0
    seed_resize_from_h: int = 0
    batch_size: int = 1
    n_iter: int = 1
    clip_skip: int = 1
    tiling: bool = False
    eta: float | None = None
    s_churn: float | None = None
    s_tmin: float | None = None
    s_tmax: float | None = None
    s_noise: float | None = None
    s_min_uncond: float = 0.0  # A1111's NGMS: below this sigma, every other step skips the uncond
    eta_noise_seed_delta: int = 0
    # img2img / inpaint
    init_images: tuple[str, ...] = ()
    mask: str | None = None
    denoising_strength: float | None = None
    resize_mode: int = 0
    image_cfg_scale: float | None = None
    mask_blur_x: int = 4
    mask_blur_y: int = 4
    inpainting_fill: int = 1
    inpaint_full_res: bool = False
    inpaint_full_res_padding: int = 32
    inpainting_mask_invert: bool = False
    mask_round: bool = True  # False: the latent blend keeps the blurred mask soft
    initial_noise_multiplier: float = 1.0
    # extras
    hires: HiresSettings | None = None
    loras: tuple[LoraRef, ...] = ()
    vae: str | None = None
    styles: tuple[str, ...] = ()
    # A1111's refiner: sampling moves to this model (a catalog name) after ``refiner_switch_at``
    # (a fraction of the steps, 0..1 exclusive); None: no refiner.
    refiner: str | None = None
    refiner_switch_at: float | None = None
    # A1111's restore_faces: the face restorer (``core.restorers``) run on each final image; None: off.
    restore_faces: str | None = None

    @property
    def image_count(self) -> int:
        return self.batch_size * self.n_iter

    def seeds(self) -> list[int]:
        """A1111's rule: image i uses seed + i (wrapping at 2**64), unless a variation seed is used."""
        if self.subseed_strength > 0:
            return [self.seed] * self.image_count
        return [(self.seed + i) % (MAX_SEED + 1) for i in range(self.image_count)]

    def subseeds(self) -> list[int]:
        if self.subseed_strength > 0:
            return [(self.subseed + i) % (MAX_SEED + 1) for i in range(self.image_count)]
        return [self.subseed] * self.image_count
