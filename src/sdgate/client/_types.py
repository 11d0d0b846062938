"""The SDK's data types: what a caller builds (``ImageRequest``) and gets back."""

from __future__ import annotations

import base64
import hashlib
import io
import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from PIL import Image

ImageInput = bytes | str | Path | Image.Image
Mode = Literal["txt2img", "img2img", "inpaint"]
TERMINAL_STATES = frozenset({"succeeded", "failed", "cancelled"})


def to_png_bytes(image: ImageInput | None) -> bytes | None:
    """Any image a caller passes (PNG/JPEG bytes, a path, a PIL image) as encoded bytes."""
    if image is None:
        return None
    if isinstance(image, bytes):
        return image
    if isinstance(image, str | Path):
        return Path(image).read_bytes()
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


@dataclass(frozen=True, slots=True)
class Lora:
    """A LoRA to apply: ``weight`` on the text encoder, ``unet_weight`` (default: the same) on the UNet."""

    name: str
    weight: float = 1.0
    unet_weight: float | None = None

    @classmethod
    def parse(cls, value: Lora | str | tuple[Any, ...] | dict[str, Any]) -> Lora:
        """``Lora``, ``"name"``, ``"name:0.7"``, ``("name", 0.7)`` or ``{"name": ..., "weight": ...}``."""
        if isinstance(value, Lora):
            return value
        if isinstance(value, dict):
            return cls(**value)
        if isinstance(value, tuple | list):
            return cls(*value)
        if isinstance(value, str):
            name, sep, weight = value.rpartition(":")
            if sep and name:
                try:
                    return cls(name, float(weight))
                except ValueError:
                    pass
            return cls(value)
        raise TypeError(f"not a LoRA: {value!r} (use 'name', 'name:0.7' or Lora(name, weight))")


@dataclass(frozen=True, slots=True)
class Hires:
    """Hires fix: a second pass at ``scale`` times the size (or at ``resize_x`` x ``resize_y``).
    ``None`` and 0 mean the service's default (steps 0: as many as the first pass)."""

    scale: float = 2.0
    upscaler: str = "Latent"
    second_pass_steps: int = 0
    denoising_strength: float = 0.7
    resize_x: int = 0
    resize_y: int = 0
    sampler: str | None = None
    scheduler: str | None = None
    prompt: str = ""
    negative_prompt: str = ""

    @classmethod
    def parse(cls, value: Hires | float | int | dict[str, Any]) -> Hires:
        """``Hires``, a scale (``2.0``) or a dict of fields."""
        if isinstance(value, Hires):
            return value
        if isinstance(value, dict):
            return cls(**value)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return cls(scale=float(value))
        raise TypeError(f"not a hires setting: {value!r} (use a scale such as 2.0, or Hires(...))")


@dataclass(frozen=True, slots=True)
class ImageRequest:
    """One generation, in the native API's field names. ``None`` means "the service's default".

    ``loras`` take ``Lora`` objects or ``"name:0.7"`` strings, ``hires`` a ``Hires`` or a scale.
    The fields after ``denoising_strength`` are A1111's (and sdgate's): other services may not
    honour them (see ``GenerationResult.ignored_fields``, or ``strict=True``).
    """

    prompt: str
    negative_prompt: str = ""
    width: int | None = None
    height: int | None = None
    steps: int | None = None
    cfg_scale: float | None = None
    sampler: str | None = None
    scheduler: str | None = None
    seed: int | None = None  # None: a random seed chosen by the service
    batch_size: int = 1
    model: str | None = None
    init_image: bytes | None = None  # encoded image bytes (use ``ImageRequest.build`` for paths/PIL)
    mask: bytes | None = None
    denoising_strength: float | None = None
    # sampling, as A1111 has it
    n_iter: int = 1  # batches run one after another: batch_size * n_iter images
    subseed: int | None = None  # variation seed (None: random)
    subseed_strength: float | None = None
    seed_resize_from_w: int | None = None
    seed_resize_from_h: int | None = None
    clip_skip: int | None = None
    tiling: bool = False
    eta: float | None = None
    s_churn: float | None = None
    s_tmin: float | None = None
    s_tmax: float | None = None
    s_noise: float | None = None
    eta_noise_seed_delta: int | None = None
    # img2img / inpaint details
    resize_mode: int | None = None
    image_cfg_scale: float | None = None
    mask_blur: int | None = None
    inpainting_fill: int | None = None
    inpaint_full_res: bool | None = None
    inpaint_full_res_padding: int | None = None
    inpainting_mask_invert: bool | None = None
    initial_noise_multiplier: float | None = None
    # extras
    hires: Hires | None = None
    loras: tuple[Lora, ...] = ()
    vae: str | None = None
    styles: tuple[str, ...] = ()
    # the job
    priority: int = 0
    metadata: dict[str, Any] | None = None
    callback_url: str | None = None  # sdgate jobs: POSTed the finished job (signed)

    def __post_init__(self) -> None:
        # Accept the convenient spellings (lists, "name:0.7", a bare scale) and store one form.
        if not isinstance(self.loras, tuple) or any(not isinstance(x, Lora) for x in self.loras):
            loras = [self.loras] if isinstance(self.loras, str | Lora | dict) else self.loras
            object.__setattr__(self, "loras", tuple(Lora.parse(x) for x in loras))
        if self.hires is not None and not isinstance(self.hires, Hires):
            object.__setattr__(self, "hires", Hires.parse(self.hires))
        if not isinstance(self.styles, tuple):
            styles = [self.styles] if isinstance(self.styles, str) else self.styles
            object.__setattr__(self, "styles", tuple(str(x) for x in styles))

    @classmethod
    def build(
        cls,
        prompt: str,
        *,
        init_image: ImageInput | None = None,
        mask: ImageInput | None = None,
        **fields: Any,
    ) -> ImageRequest:
        unknown = set(fields) - set(cls.__dataclass_fields__)
        if unknown:
            raise TypeError(f"unknown request field(s): {', '.join(sorted(unknown))}")
        return cls(prompt=prompt, init_image=to_png_bytes(init_image), mask=to_png_bytes(mask), **fields)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ImageRequest:
        """From a JSON object (a ``prompts.jsonl`` line); ``n`` is accepted for ``batch_size``."""
        data = dict(data)
        if "n" in data:
            data["batch_size"] = data.pop("n")
        prompt = data.pop("prompt", None)
        if not isinstance(prompt, str):
            raise TypeError("a request needs a 'prompt' string")
        return cls.build(prompt, **data)

    @property
    def mode(self) -> Mode:
        if self.mask is not None:
            return "inpaint"
        return "img2img" if self.init_image is not None else "txt2img"

    def replace(self, **changes: Any) -> ImageRequest:
        return replace(self, **changes)

    def fingerprint(self) -> str:
        """A content hash of everything that decides the pixels (images by their hash)."""
        data = asdict(self)
        for key in ("init_image", "mask"):
            if data[key] is not None:
                data[key] = hashlib.sha256(data[key]).hexdigest()
        for key in ("priority", "metadata", "callback_url"):  # the job's, not the image's
            data.pop(key)
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


@dataclass(slots=True)
class GenerationResult:
    """Images and what made them. ``images`` are PIL images; ``data`` their encoded bytes."""

    images: list[Image.Image]
    seeds: list[int | None]
    infotexts: list[str]
    data: list[bytes] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    job_id: str | None = None
    backend: str = ""
    ignored_fields: tuple[str, ...] = ()  # request fields the backend could not honour
    cached: bool = False
    # Per image: True where the server's content filter replaced it by a blank one (sdgate's native
    # API and Stability's CONTENT_FILTERED say so; empty when the backend does not tell).
    filtered: list[bool] = field(default_factory=list)

    def save(self, directory: str | Path, *, prefix: str = "image") -> list[Path]:
        """Write each image as ``<prefix>-<i>.png`` (original bytes, so the infotext is kept)."""
        out_dir = Path(directory)
        out_dir.mkdir(parents=True, exist_ok=True)
        paths: list[Path] = []
        for i, image in enumerate(self.images):
            path = out_dir / f"{prefix}-{i}.png"
            raw = self.data[i] if i < len(self.data) else None
            if raw is not None and raw[:8] == b"\x89PNG\r\n\x1a\n":
                path.write_bytes(raw)
            else:
                image.save(path, format="PNG")
            paths.append(path)
        return paths


@dataclass(frozen=True, slots=True)
class Progress:
    step: int = 0
    total: int = 0
    eta_s: float | None = None

    @property
    def fraction(self) -> float:
        return self.step / self.total if self.total else 0.0


@dataclass(frozen=True, slots=True)
class Job:
    """A native job as the server describes it."""

    id: str
    state: str
    position: int | None = None
    progress: Progress | None = None
    result: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    created_at: datetime | str | None = None
    request: dict[str, Any] | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def done(self) -> bool:
        return self.state in TERMINAL_STATES

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Job:
        prog = data.get("progress")
        progress = None
        if isinstance(prog, dict):
            progress = Progress(
                step=int(prog.get("step") or 0), total=int(prog.get("total") or 0), eta_s=prog.get("eta_s")
            )
        return cls(
            id=str(data["id"]),
            state=str(data.get("state", "")),
            position=data.get("position"),
            progress=progress,
            result=data.get("result"),
            error=data.get("error"),
            created_at=data.get("created_at"),
            request=data.get("request"),
            raw=data,
        )


class JobList(list[Job]):
    """One page of ``jobs.list()``: pass ``next_cursor`` as ``cursor=`` for the next (``None``: last)."""

    def __init__(self, jobs: Iterable[Job] = (), *, next_cursor: str | None = None) -> None:
        super().__init__(jobs)
        self.next_cursor = next_cursor


@dataclass(frozen=True, slots=True)
class ProgressEvent:
    """One step of a job's life: ``kind`` is queued, started, progress, succeeded, failed or cancelled."""

    kind: str
    job_id: str | None = None
    step: int = 0
    total: int = 0
    eta_s: float | None = None
    data: dict[str, Any] = field(default_factory=dict, repr=False)
    result: GenerationResult | None = field(default=None, repr=False)  # on the final event of stream()

    @property
    def terminal(self) -> bool:
        return self.kind in TERMINAL_STATES

    @property
    def fraction(self) -> float:
        return self.step / self.total if self.total else 0.0

    @property
    def preview(self) -> Image.Image | None:
        """The live preview some services attach (sdgate: a ``data:`` URI; ComfyUI: image bytes)."""
        raw = self.data.get("preview")
        if isinstance(raw, str) and raw:
            try:
                raw = base64.b64decode(raw.partition(",")[2] if raw.startswith("data:") else raw)
            except ValueError:
                return None
        if not isinstance(raw, bytes) or not raw:
            return None
        try:
            return Image.open(io.BytesIO(raw))
        except Exception:  # noqa: BLE001 - a preview is a nicety
            return None


@dataclass(frozen=True, slots=True)
class Model:
    name: str
    title: str = ""
    raw: dict[str, Any] = field(default_factory=dict, repr=False)


@dataclass(slots=True)
class BatchItem:
    """One request of a batch: exactly one of ``result`` / ``error`` is set, unless ``skipped``."""

    index: int
    request: ImageRequest
    result: GenerationResult | None = None
    error: BaseException | None = None
    paths: list[Path] = field(default_factory=list)
    skipped: bool = False  # already on disk from an earlier run

    @property
    def ok(self) -> bool:
        return self.error is None
