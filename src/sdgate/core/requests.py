"""The one request type every dialect translates into, and the other kind of job a worker runs.

A ``GenerationRequest`` is what a job stores and what the engine runs: fully resolved (seeds are
concrete numbers, sampler and scheduler are canonical A1111 names), so a job re-run after a crash
draws the same pixels. Dialect quirks stay in the dialects.

A ``PostprocessRequest`` (A1111's extras: upscale, blend a second upscaler, crop, restore faces) is
the other kind of job: it draws nothing, but it runs on a worker like a generation, so the API
process never loads an upscaler. ``JobRequest`` is either, told apart by ``mode`` (``"extras"``
for a postprocess; a generation's JSON is unchanged). Both name their input images through
``image_refs()``: the one list of a request's images, with the role each plays.

A ``GraphRequest`` (a ComfyUI prompt) is the third kind: a validated node graph the worker's graph
executor runs on the engine's components (mode ``"comfy"``).
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any, Literal, NamedTuple

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, TypeAdapter

MAX_SEED = 2**64 - 1


class Mode(StrEnum):
    TXT2IMG = "txt2img"
    IMG2IMG = "img2img"
    INPAINT = "inpaint"


class ImageRole(StrEnum):
    """What an input image is for; the engine receives images grouped by it (``EngineInputs``)."""

    INIT = "init"
    MASK = "mask"
    CONTROL = "control"  # a ControlNet unit's control image (``GenerationRequest.controlnets``)
    CONTROL_MASK = "control_mask"  # a ControlNet unit's own mask: where its guidance applies


class ImageRef(NamedTuple):
    """One input image of a request: its ``ImageStore`` id, its role, and the request field it came
    from (``init_images``, ``mask``), which an error about it names."""

    id: str
    role: ImageRole
    field: str


class LoraRef(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: str
    te_weight: float = 1.0
    unet_weight: float = 1.0


class ControlMode(StrEnum):
    """How a ControlNet's guidance weighs against the prompt (A1111's ``control_mode``)."""

    BALANCED = "balanced"
    PROMPT = "prompt"  # "My prompt is more important"
    CONTROLNET = "controlnet"  # "ControlNet is more important"


class ControlResize(StrEnum):
    """How a control image is fitted to the generation's size (A1111's ``resize_mode``)."""

    JUST_RESIZE = "just_resize"  # stretch to the size
    CROP_AND_RESIZE = "crop_and_resize"  # cover the size, crop the overflow (centred)
    RESIZE_AND_FILL = "resize_and_fill"  # fit inside the size, pad the rest


class ControlNetUnit(BaseModel):
    """One ControlNet guiding a generation (several: multi-ControlNet), as every dialect translates
    it: the model (a catalog name of a file or folder in ``ControlNet/``/``controlnet/``), its control
    image (an ``ImageStore`` id; None: the request's first init image, as A1111 uses for img2img),
    the preprocessor ``module`` run on that image first (``none``: it already is a control map;
    ``core.controlnet`` lists them), and how strongly and when it guides. Values are bounded by
    every dialect where they enter; the ranges here are the last guard."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model: str
    image: str | None = None
    mask: str | None = None  # where this unit guides (white), from its own mask image
    module: str = "none"
    weight: float = Field(1.0, ge=0.0, le=2.0)
    guidance_start: float = Field(0.0, ge=0.0, le=1.0)
    guidance_end: float = Field(1.0, ge=0.0, le=1.0)
    control_mode: ControlMode = ControlMode.BALANCED
    resize_mode: ControlResize = ControlResize.CROP_AND_RESIZE
    processor_res: int = Field(512, ge=64, le=2048)  # the preprocessor's working resolution
    threshold_a: float | None = None  # the preprocessor's first parameter (canny: low threshold)
    threshold_b: float | None = None  # its second (canny: high threshold)
    pixel_perfect: bool = False  # processor_res from the generation's size instead

    def image_refs(self, index: int) -> tuple[ImageRef, ...]:
        refs = []
        if self.image is not None:
            refs.append(ImageRef(self.image, ImageRole.CONTROL, f"controlnets[{index}].image"))
        if self.mask is not None:
            refs.append(ImageRef(self.mask, ImageRole.CONTROL_MASK, f"controlnets[{index}].mask"))
        return tuple(refs)


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
    # ControlNet units (multi-ControlNet), applied in order; empty: none.
    controlnets: tuple[ControlNetUnit, ...] = ()

    @property
    def image_count(self) -> int:
        return self.batch_size * self.n_iter

    def image_refs(self) -> tuple[ImageRef, ...]:
        """Every image this request reads, init images first (in order), then the mask, then each
        ControlNet unit's image and mask (in unit order)."""
        mask = (ImageRef(self.mask, ImageRole.MASK, "mask"),) if self.mask is not None else ()
        controls = tuple(ref for i, unit in enumerate(self.controlnets) for ref in unit.image_refs(i))
        return (*_init_refs(self.init_images), *mask, *controls)

    def seeds(self) -> list[int]:
        """A1111's rule: image i uses seed + i (wrapping at 2**64), unless a variation seed is used."""
        if self.subseed_strength > 0:
            return [self.seed] * self.image_count
        return [(self.seed + i) % (MAX_SEED + 1) for i in range(self.image_count)]

    def subseeds(self) -> list[int]:
        if self.subseed_strength > 0:
            return [(self.subseed + i) % (MAX_SEED + 1) for i in range(self.image_count)]
        return [self.subseed] * self.image_count


EXTRAS_MODE = "extras"


class FacePass(BaseModel):
    """One face restorer run over each picture, blended in at ``visibility`` (0..1]."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    restorer: str  # an installed restorer's name (``core.restorers``), resolved at submit
    visibility: float = Field(1.0, gt=0.0, le=1.0)
    field: str = "restore_faces"  # the request field an error names (``gfpgan_visibility``, ...)


class PostprocessRequest(BaseModel):
    """A1111's extras over stored pictures, in A1111's order: ``upscaler_1`` to the target size,
    ``upscaler_2`` blended in at ``upscaler_2_visibility``, a centred crop to the exact size when
    ``crop`` (to-size mode only), then each face pass. One output picture per input, no infotext.

    The target size is ``scale`` times the picture's (``resize_mode`` 0) or ``width`` x ``height``
    (``resize_mode`` 1); ``target_size`` computes it, at submit (for the limits) and on the worker.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    mode: Literal["extras"] = EXTRAS_MODE
    # ``init_images``, as every request calls its input images: ``ImageStore`` ids, validated at the edge.
    init_images: tuple[str, ...] = ()
    resize_mode: int = Field(0, ge=0, le=1)  # 0: by ``scale``; 1: to ``width`` x ``height``
    scale: float = Field(2.0, gt=0.0)
    width: int = Field(512, ge=1)
    height: int = Field(512, ge=1)
    crop: bool = True
    upscaler_1: str = "None"
    upscaler_2: str = "None"
    upscaler_2_visibility: float = Field(0.0, ge=0.0, le=1.0)
    faces: tuple[FacePass, ...] = ()
    codeformer_weight: float = Field(0.5, ge=0.0, le=1.0)

    @property
    def image_count(self) -> int:
        return len(self.init_images)

    @property
    def second_upscaler(self) -> str | None:
        """``upscaler_2`` when it takes part (a name and a visibility above 0), else None."""
        if self.upscaler_2 in ("None", "") or self.upscaler_2_visibility <= 0:
            return None
        return self.upscaler_2

    def image_refs(self) -> tuple[ImageRef, ...]:
        return _init_refs(self.init_images)

    def target_size(self, width: int, height: int) -> tuple[int, int]:
        """The output size of a ``width`` x ``height`` picture."""
        if self.resize_mode == 1:
            return self.width, self.height
        return round(width * self.scale), round(height * self.scale)

    def upscaled_size(self, width: int, height: int) -> tuple[int, int]:
        """The size the upscalers bring a picture to: the target, or, when cropping to a size of
        another aspect, the smallest size covering it (A1111: then crop, centred)."""
        w, h = self.target_size(width, height)
        if not (self.resize_mode == 1 and self.crop):
            return w, h
        scale = max(w / width, h / height)
        return round(width * scale), round(height * scale)


GRAPH_MODE = "comfy"


class GraphRequest(BaseModel):
    """A ComfyUI API-format graph run as one job (``server/dialects/comfy`` validates it, resolves
    its file names and submits it; the worker's graph executor, ``engine/comfy``, runs its nodes on
    the engine's components). ``graph`` is the validated prompt: ``{node_id: {"class_type",
    "inputs"}}`` with links as ``[node_id, output_index]``; ``outputs`` the output node ids to run.
    ``images``: the image files its LoadImage/LoadImageMask nodes read, as ``(file name, image id
    in the ImageStore)`` pairs, in the order ``image_refs()`` gives (the worker decodes them into
    ``EngineInputs.init_images`` in that order). ``image_count``: the images its output nodes will
    write, counted at validation (quotas and limits read it)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    mode: Literal["comfy"] = GRAPH_MODE
    graph: dict[str, Any]
    outputs: tuple[str, ...]
    images: tuple[tuple[str, str], ...] = ()
    client_id: str | None = None
    extra_data: dict[str, Any] = Field(default_factory=dict)
    number: float = 0.0  # ComfyUI's queue number, as the client gave it or as assigned
    image_count: int = Field(1, ge=0)
    model: str | None = None  # the first checkpoint it loads (a catalog name): claim affinity, metrics

    def image_refs(self) -> tuple[ImageRef, ...]:
        return tuple(ImageRef(image_id, ImageRole.INIT, f"prompt.{name}") for name, image_id in self.images)


def _init_refs(ids: tuple[str, ...]) -> tuple[ImageRef, ...]:
    return tuple(ImageRef(image_id, ImageRole.INIT, "init_images") for image_id in ids)


def _request_kind(value: Any) -> str:
    mode = value.get("mode") if isinstance(value, dict) else getattr(value, "mode", None)
    if mode == GRAPH_MODE:
        return "graph"
    return "extras" if mode == EXTRAS_MODE else "generation"


# What a job runs: a generation, a postprocess or a graph (told apart by ``mode``).
JobRequest = Annotated[
    Annotated[GenerationRequest, Tag("generation")]
    | Annotated[PostprocessRequest, Tag("extras")]
    | Annotated[GraphRequest, Tag("graph")],
    Discriminator(_request_kind),
]

_JOB_REQUEST: TypeAdapter[GenerationRequest | PostprocessRequest | GraphRequest] = TypeAdapter(JobRequest)


def parse_job_request(data: Any) -> GenerationRequest | PostprocessRequest | GraphRequest:
    """A stored request (its JSON) as the model its ``mode`` names."""
    return _JOB_REQUEST.validate_python(data)
