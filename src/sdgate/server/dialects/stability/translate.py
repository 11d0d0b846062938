"""Pure translation between Stability's wire formats (v1 and v2beta) and sdgate's core types."""

from __future__ import annotations

import json
import logging
import math
import re
import secrets
from collections.abc import Iterable, Sequence
from typing import Any

from PIL import Image, ImageOps
from pydantic import BaseModel

from sdgate.core.engine import ModelDefaults
from sdgate.core.errors import ContentFiltered, InvalidRequest, SdgateError
from sdgate.core.requests import ControlNetUnit, GenerationRequest, Mode
from sdgate.core.results import GenerationResult
from sdgate.core.samplers import SamplerChoice, resolve_sampler
from sdgate.server.dialects.stability.protocol import (
    MAX_SEED_V1,
    SIZE_STEP_V1,
    UPSCALE_MAX_PIXELS,
    AspectRatio,
    ClipGuidancePreset,
    ControlParams,
    GenerationParams,
    ImageToImageParams,
    InitImageMode,
    MaskingParams,
    MaskSource,
    Sampler,
    StableImageParams,
    StylePreset,
    TextPrompt,
    TextToImageRequest,
    UpscaleParams,
)
from sdgate.server.validation import check_counts, check_size
from sdgate.settings import Settings

log = logging.getLogger("sdgate.stability")

# Stability's sampler enum -> A1111 names (the names our engine runs). DDPM has no A1111 sampler:
# ancestral Euler draws from the same reverse process, so it is the nearest (logged when used).
SAMPLERS: dict[Sampler, str] = {
    Sampler.DDIM: "DDIM",
    Sampler.DDPM: "Euler a",
    Sampler.K_DPMPP_2M: "DPM++ 2M",
    Sampler.K_DPMPP_2S_ANCESTRAL: "DPM++ 2S a",
    Sampler.K_DPM_2: "DPM2",
    Sampler.K_DPM_2_ANCESTRAL: "DPM2 a",
    Sampler.K_EULER: "Euler",
    Sampler.K_EULER_ANCESTRAL: "Euler a",
    Sampler.K_HEUN: "Heun",
    Sampler.K_LMS: "LMS",
}

# Style presets become prompt suffixes (the service's presets are prompt styling, not models).
STYLE_SUFFIXES: dict[StylePreset, str] = {
    StylePreset.ENHANCE: "highly detailed, sharp focus, vibrant colors",
    StylePreset.ANIME: "anime style, key visual, vibrant, studio anime",
    StylePreset.PHOTOGRAPHIC: "photograph, realistic, natural lighting, 35mm",
    StylePreset.DIGITAL_ART: "digital art, concept art, highly detailed",
    StylePreset.COMIC_BOOK: "comic book style, bold lines, halftone",
    StylePreset.FANTASY_ART: "fantasy art, epic, magical, detailed",
    StylePreset.LINE_ART: "line art, clean lines, monochrome drawing",
    StylePreset.ANALOG_FILM: "analog film photo, film grain, faded colors",
    StylePreset.NEON_PUNK: "neon punk style, cyberpunk, vivid neon lights",
    StylePreset.ISOMETRIC: "isometric view, 3d render, clean",
    StylePreset.LOW_POLY: "low poly, geometric, 3d render",
    StylePreset.ORIGAMI: "origami, folded paper art",
    StylePreset.MODELING_COMPOUND: "clay model, plasticine, claymation",
    StylePreset.CINEMATIC: "cinematic film still, dramatic lighting, shallow depth of field",
    StylePreset.THREE_D_MODEL: "3d model, octane render, detailed",
    StylePreset.PIXEL_ART: "pixel art, 8-bit, retro game",
    StylePreset.TILE_TEXTURE: "seamless tile texture, pattern",
}

FINISH_SUCCESS = "SUCCESS"
FINISH_FILTERED = "CONTENT_FILTERED"  # the safety checker replaced the image with a black one


def finish_reasons(result: GenerationResult | None) -> list[str]:
    """``finishReason`` of each image of ``result``, in order."""
    images = result.images if result is not None else ()
    return [FINISH_FILTERED if image.filtered else FINISH_SUCCESS for image in images]
DEFAULT_MASK_STRENGTH = 1.0  # a masked region is repainted from scratch unless the client says otherwise

_ignored: set[str] = set()
_INDEXED = re.compile(r"^text_prompts\[(\d+)\]\[(\w+)\]$")
_ASPECT = {r: tuple(int(p) for p in r.value.split(":")) for r in AspectRatio}


def random_seed() -> int:
    """Stability's seed 0 means random: draw one the client can send back (uint32)."""
    return 1 + secrets.randbelow(MAX_SEED_V1 - 1)


def concrete_seed(seed: int) -> int:
    return seed if seed > 0 else random_seed()


# -- prompts, samplers, sizes ---------------------------------------------------------------------


def split_prompts(prompts: Sequence[TextPrompt], style: StylePreset | None = None) -> tuple[str, str]:
    """(prompt, negative prompt): negative weights go to the negative prompt, weights other than
    1 become A1111 attention syntax ``(text:w)``, zero weights are dropped."""
    positive, negative = [], []
    for item in prompts:
        text = item.text.strip()
        if not text or item.weight == 0:
            continue
        weight = abs(item.weight)
        part = text if math.isclose(weight, 1.0) else f"({text}:{weight:g})"
        (positive if item.weight > 0 else negative).append(part)
    if style is not None:
        positive.append(STYLE_SUFFIXES[style])
    return ", ".join(positive), ", ".join(negative)


def sampler_choice(sampler: Sampler | None) -> SamplerChoice:
    if sampler == Sampler.DDPM:
        log.info("stability: DDPM has no sampler here; running the nearest, Euler a")
    return resolve_sampler(SAMPLERS[sampler] if sampler else None, None)


def v1_size(width: int | None, height: int | None, defaults: ModelDefaults) -> tuple[int, int]:
    """text-to-image size: the model's native size when left out; multiples of 64 (the spec)."""
    w, h = width or defaults.width, height or defaults.height
    for name, value in (("width", w), ("height", h)):
        if value % SIZE_STEP_V1:
            raise InvalidRequest(f"{name}: must be a multiple of {SIZE_STEP_V1}, got {value}", field=name)
    return w, h


def image_size(size: tuple[int, int], defaults: ModelDefaults) -> tuple[int, int]:
    """An init image's size rounded down to what the model can draw (its VAE factor)."""
    factor = defaults.vae_scale_factor
    return max(factor, size[0] - size[0] % factor), max(factor, size[1] - size[1] % factor)


def aspect_size(ratio: AspectRatio, defaults: ModelDefaults) -> tuple[int, int]:
    """v2beta ``aspect_ratio`` at the model's native pixel count (1 MP on SDXL), sides ×64."""
    rw, rh = _ASPECT[ratio]
    area = defaults.width * defaults.height
    unit = math.sqrt(area / (rw * rh))
    step = max(SIZE_STEP_V1, defaults.vae_scale_factor)
    return max(step, round(rw * unit / step) * step), max(step, round(rh * unit / step) * step)


def upscale_size(size: tuple[int, int], width: int | None, height: int | None) -> tuple[int, int]:
    w, h = size
    if width and height:
        raise InvalidRequest("width: give only one of width or height", field="width")
    if width:
        out = (width, max(1, round(h * width / w)))
    elif height:
        out = (max(1, round(w * height / h)), height)
    else:
        out = (w * 2, h * 2)
    if out[0] * out[1] > UPSCALE_MAX_PIXELS:
        raise InvalidRequest(
            f"width: {out[0]}x{out[1]} is more than the {UPSCALE_MAX_PIXELS} pixels allowed", field="width"
        )
    return out


# -- requests -------------------------------------------------------------------------------------


def _base(
    body: GenerationParams, *, model: str, defaults: ModelDefaults, settings: Settings, size: tuple[int, int]
) -> dict[str, Any]:
    prompt, negative = split_prompts(body.text_prompts, body.style_preset)
    if body.clip_guidance_preset != ClipGuidancePreset.NONE and not _ignored:
        _ignored.add("clip_guidance_preset")
        log.info("stability: clip_guidance_preset is accepted and ignored (no CLIP guidance here)")
    steps = body.steps or defaults.steps
    check_counts(steps, body.samples, 1, body.cfg_scale, settings)
    check_size(size[0], size[1], defaults, settings)
    choice = sampler_choice(body.sampler)
    return {
        "prompt": prompt,
        "negative_prompt": negative,
        "model": model,
        "width": size[0],
        "height": size[1],
        "steps": steps,
        "cfg_scale": body.cfg_scale,
        "sampler": choice.sampler,
        "scheduler": choice.scheduler,
        "seed": concrete_seed(body.seed),
        "batch_size": body.samples,
    }


def text_to_image_request(
    body: TextToImageRequest, *, model: str, defaults: ModelDefaults, settings: Settings
) -> GenerationRequest:
    size = v1_size(body.width, body.height, defaults)
    return GenerationRequest(
        mode=Mode.TXT2IMG, **_base(body, model=model, defaults=defaults, settings=settings, size=size)
    )


def strength_of(
    mode: InitImageMode | None,
    image_strength: float | None,
    step_schedule_start: float | None,
    default: float,
) -> float:
    """Our denoising strength: ``image_strength`` is how much of the init image to keep
    (1 - strength); ``step_schedule_start`` is the strength itself."""
    if mode == InitImageMode.STEP_SCHEDULE or (mode is None and step_schedule_start is not None):
        return step_schedule_start if step_schedule_start is not None else 0.65
    if image_strength is not None:
        return 1.0 - image_strength
    return default


def image_to_image_request(
    body: ImageToImageParams,
    *,
    init_image: str,
    init_size: tuple[int, int],
    model: str,
    defaults: ModelDefaults,
    settings: Settings,
) -> GenerationRequest:
    size = image_size(init_size, defaults)
    strength = strength_of(body.init_image_mode, body.image_strength, body.step_schedule_start, 0.65)
    return GenerationRequest(
        mode=Mode.IMG2IMG,
        init_images=(init_image,),
        denoising_strength=strength,
        **_base(body, model=model, defaults=defaults, settings=settings, size=size),
    )


def masking_request(
    body: MaskingParams,
    *,
    init_image: str,
    mask: str,
    init_size: tuple[int, int],
    model: str,
    defaults: ModelDefaults,
    settings: Settings,
) -> GenerationRequest:
    """``mask`` is already normalised to white = repaint (see ``mask_from_source``)."""
    size = image_size(init_size, defaults)
    strength = strength_of(
        body.init_image_mode, body.image_strength, body.step_schedule_start, DEFAULT_MASK_STRENGTH
    )
    return GenerationRequest(
        mode=Mode.INPAINT,
        init_images=(init_image,),
        mask=mask,
        denoising_strength=strength,
        inpainting_mask_invert=False,
        **_base(body, model=model, defaults=defaults, settings=settings, size=size),
    )


def latent_upscale_request(
    body: UpscaleParams,
    *,
    init_image: str,
    size: tuple[int, int],
    model: str,
    defaults: ModelDefaults,
    settings: Settings,
) -> GenerationRequest:
    """The latent upscaler as a low-strength img2img pass at the target size."""
    target = image_size(size, defaults)
    check_size(target[0], target[1], defaults, settings)
    prompt, negative = split_prompts(body.text_prompts)
    return GenerationRequest(
        mode=Mode.IMG2IMG,
        prompt=prompt,
        negative_prompt=negative,
        model=model,
        width=target[0],
        height=target[1],
        steps=body.steps or defaults.steps,
        cfg_scale=body.cfg_scale,
        seed=concrete_seed(body.seed),
        init_images=(init_image,),
        denoising_strength=0.3,
    )


def stable_image_request(
    service: str,
    body: StableImageParams,
    *,
    model: str,
    defaults: ModelDefaults,
    settings: Settings,
    init_image: str | None = None,
    init_size: tuple[int, int] | None = None,
) -> GenerationRequest:
    """v2beta generate/{core,sd3,ultra}: text-to-image, or image-to-image when an image is sent."""
    prompt = body.prompt.strip()
    if body.style_preset is not None:
        prompt = f"{prompt}, {STYLE_SUFFIXES[body.style_preset]}"
    image_mode = init_image is not None and init_size is not None
    if body.mode == "image-to-image" and not image_mode and service != "core":
        raise InvalidRequest("image: is required when mode is image-to-image", field="image")
    if image_mode and body.strength is None:
        raise InvalidRequest("strength: is required with an image", field="strength")
    size = (
        image_size(init_size, defaults)
        if image_mode and init_size
        else aspect_size(body.aspect_ratio, defaults)
    )
    check_size(size[0], size[1], defaults, settings)
    choice = resolve_sampler(None, None)
    return GenerationRequest(
        mode=Mode.IMG2IMG if image_mode else Mode.TXT2IMG,
        prompt=prompt,
        negative_prompt=body.negative_prompt,
        model=model,
        width=size[0],
        height=size[1],
        steps=defaults.steps,
        cfg_scale=body.cfg_scale if body.cfg_scale is not None else 7.0,
        sampler=choice.sampler,
        scheduler=choice.scheduler,
        seed=concrete_seed(body.seed),
        init_images=(init_image,) if image_mode and init_image else (),
        denoising_strength=body.strength if image_mode else None,
    )


# -- control/sketch and control/structure ---------------------------------------------------------

# What each control service looks for in the installed ControlNets' names, in order of preference.
CONTROL_KINDS: dict[str, tuple[str, ...]] = {
    "sketch": ("scribble", "sketch", "canny"),
    "structure": ("canny",),
}


def pick_controlnet(service: str, names: Sequence[str]) -> str | None:
    """The first installed ControlNet (of those that fit the model) whose name says what
    ``service`` needs, by ``CONTROL_KINDS`` order; None when none does."""
    for word in CONTROL_KINDS[service]:
        found = next((name for name in names if word in name.lower()), None)
        if found is not None:
            return found
    return None


def sketch_module(image: Image.Image) -> str:
    """A sketch is dark lines on white: inverted, it is the white-on-black scribble map the
    ControlNets expect. Anything darker (a photo, light lines on dark) gets its lines drawn by
    ``scribble_xdog``."""
    grey = image.convert("L")
    grey.thumbnail((256, 256))
    histogram = grey.histogram()
    half = sum(histogram) / 2
    seen = 0
    for level, count in enumerate(histogram):  # the median grey level
        seen += count
        if seen >= half:
            return "invert" if level > 127 else "scribble_xdog"
    return "invert"  # pragma: no cover - an image has pixels


def control_request(
    body: ControlParams,
    *,
    control: ControlNetUnit,
    image_size_px: tuple[int, int],
    model: str,
    defaults: ModelDefaults,
    settings: Settings,
) -> GenerationRequest:
    """control/{sketch,structure}: text-to-image guided by the one ControlNet unit, at the control
    image's size (rounded to the model's VAE factor), as the service keeps the input's aspect."""
    prompt = body.prompt.strip()
    if body.style_preset is not None:
        prompt = f"{prompt}, {STYLE_SUFFIXES[body.style_preset]}"
    size = image_size(image_size_px, defaults)
    check_size(size[0], size[1], defaults, settings)
    choice = resolve_sampler(None, None)
    return GenerationRequest(
        mode=Mode.TXT2IMG,
        prompt=prompt,
        negative_prompt=body.negative_prompt,
        model=model,
        width=size[0],
        height=size[1],
        steps=defaults.steps,
        sampler=choice.sampler,
        scheduler=choice.scheduler,
        seed=concrete_seed(body.seed),
        controlnets=(control,),
    )


# -- multipart forms ------------------------------------------------------------------------------


def form_fields(items: Iterable[tuple[str, str]]) -> dict[str, Any]:
    """Multipart text fields as a JSON-like dict: ``text_prompts[0][text]`` / ``[weight]`` become
    ``text_prompts: [{text, weight}]`` (the index ties them); ``text_prompts`` may also be JSON.
    A field given twice becomes a list (so a scalar field refuses it)."""
    out: dict[str, Any] = {}
    indexed: dict[int, dict[str, Any]] = {}
    for key, value in items:
        match = _INDEXED.match(key)
        target, name = (indexed.setdefault(int(match.group(1)), {}), match.group(2)) if match else (out, key)
        if name in target:
            # A repeated field is a list, which a scalar field refuses: never a silent choice.
            previous = target[name]
            target[name] = [*(previous if isinstance(previous, list) else [previous]), value]
        elif name == "text_prompts" and not match and value.lstrip().startswith("["):
            try:
                out[name] = json.loads(value)
            except json.JSONDecodeError:
                raise InvalidRequest("text_prompts: is not valid JSON", field="text_prompts") from None
        else:
            target[name] = value
    if indexed:
        out["text_prompts"] = [indexed[i] for i in sorted(indexed)]
    return out


def unknown_fields(body: BaseModel) -> list[str]:
    names = set((body.model_extra or {}).keys())
    for value in vars(body).values():
        items = value if isinstance(value, list) else [value]
        for item in items:
            if isinstance(item, BaseModel):
                names |= {f"text_prompts[].{k}" for k in (item.model_extra or {})}
    return sorted(names)


# -- images ---------------------------------------------------------------------------------------


def mask_from_source(
    source: MaskSource,
    *,
    init_alpha: Image.Image | None,
    mask_image: Image.Image | None,
    init_size: tuple[int, int],
) -> Image.Image:
    """The mask as sdgate stores it: greyscale, white = repaint, the size of the init image.

    ``init_alpha`` is the init image's alpha channel (None when it has none); ``mask_image`` the
    ``mask_image`` upload in greyscale.
    """
    if source == MaskSource.INIT_IMAGE_ALPHA:
        if init_alpha is None:
            raise InvalidRequest(
                "init_image: has no transparency to take the mask from (INIT_IMAGE_ALPHA)", field="mask_image"
            )
        return ImageOps.invert(init_alpha)
    if mask_image is None:
        raise InvalidRequest(f"mask_image: is required with mask_source {source.value}", field="mask_image")
    if mask_image.size != init_size:
        raise InvalidRequest(
            f"mask_image: is {mask_image.size[0]}x{mask_image.size[1]} but init_image is "
            f"{init_size[0]}x{init_size[1]}",
            field="dimensions",
        )
    return ImageOps.invert(mask_image) if source == MaskSource.MASK_IMAGE_BLACK else mask_image


# -- errors ---------------------------------------------------------------------------------------

_V1_NAMES_BY_FIELD = {
    "width": "invalid_height_or_width",
    "height": "invalid_height_or_width",
    "samples": "invalid_samples",
    "mask_image": "invalid_mask_image",
    "dimensions": "invalid_image_dimensions",
}
_NAMES_BY_STATUS = {
    401: "unauthorized",
    403: "permission_denied",
    404: "not_found",
    409: "conflict",
    429: "rate_limit_exceeded",
}


def v1_error(err: SdgateError) -> tuple[int, str]:
    """(status, ``name``) of a v1 error body. v1 has no 413: a too-large file is 400 invalid_file_size."""
    if err.status_code == 413:
        return 400, "invalid_file_size"
    if isinstance(err, ContentFiltered):
        return 400, "invalid_prompts"  # Stability's name for a prompt its filter refuses
    if err.status_code == 400:
        return 400, _V1_NAMES_BY_FIELD.get(err.field or "", "bad_request")
    if err.status_code >= 500:
        return err.status_code, "server_error"
    return err.status_code, _NAMES_BY_STATUS.get(err.status_code, "bad_request")


def v2_error(err: SdgateError) -> tuple[int, str]:
    if isinstance(err, ContentFiltered):
        return 403, "content_moderation"  # v2beta refuses a flagged prompt with a 403
    if err.status_code == 413:
        return 413, "payload_too_large"
    if err.status_code >= 500:
        return err.status_code, "internal_error"
    return err.status_code, _NAMES_BY_STATUS.get(err.status_code, "bad_request")


def validation_message(errors: list[dict[str, Any]]) -> tuple[str, str]:
    """(field, message) of the first schema error FastAPI reported."""
    first = errors[0] if errors else {}
    loc = [str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path")]
    field = ".".join(loc) or "body"
    return (loc[0] if loc else "body"), f"{field}: {first.get('msg', 'invalid')}"
