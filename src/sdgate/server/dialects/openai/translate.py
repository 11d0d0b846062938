"""Pure translation between OpenAI Images wire models and sdgate's core types."""

from __future__ import annotations

import logging
import re
from typing import Any

from PIL import Image, ImageOps

from sdgate.core.engine import ModelDefaults
from sdgate.core.errors import ContentFiltered, InvalidRequest, SdgateError
from sdgate.core.requests import GenerationRequest, Mode
from sdgate.core.samplers import SamplerChoice, resolve_sampler
from sdgate.server.dialects.openai.protocol import (
    Extensions,
    ImageEditParams,
    ImageGenerationRequest,
    ImageVariationParams,
)
from sdgate.server.validation import check_counts, check_size, resolve_seed
from sdgate.settings import Settings

log = logging.getLogger("sdgate.openai")

EDIT_STRENGTH = 1.0  # the transparent area is blank: repaint it from scratch
IMG2IMG_STRENGTH = 0.75  # a whole-image edit without a mask (A1111's img2img default)
VARIATION_STRENGTH = 0.6  # a variation keeps the composition and changes the details
_SIZE = re.compile(r"^\s*(\d{1,5})\s*[xX×]\s*(\d{1,5})\s*$")


def parse_size(size: str | None, fallback: tuple[int, int]) -> tuple[int, int]:
    """``"WxH"``; None or ``"auto"``: ``fallback`` (the model's native size, or the input's)."""
    if size is None or size.strip().lower() in ("", "auto"):
        return fallback
    match = _SIZE.match(size)
    if not match:
        raise InvalidRequest(f"size: must look like 1024x1024 or be 'auto', got {size!r}", field="size")
    return int(match.group(1)), int(match.group(2))


def fit(size: tuple[int, int], defaults: ModelDefaults) -> tuple[int, int]:
    """An input image's size rounded down to what the model can draw (its VAE factor)."""
    factor = defaults.vae_scale_factor
    return max(factor, size[0] - size[0] % factor), max(factor, size[1] - size[1] % factor)


def seed_of(body: Extensions) -> int:
    """The ``seed`` extension: left out or -1 means random."""
    return resolve_seed(body.seed, field="seed")


def sampler_of(body: Extensions) -> SamplerChoice:
    choice = resolve_sampler(body.sampler, body.scheduler)
    if choice.fell_back:
        raise InvalidRequest(f"sampler: unknown sampler {choice.requested!r}", field="sampler")
    if choice.scheduler_fell_back:
        raise InvalidRequest(f"scheduler: unknown scheduler {body.scheduler!r}", field="scheduler")
    return choice


def default_response_format(model: str | None) -> str:
    """OpenAI: dall-e models answer ``url`` by default; GPT image models only ever ``b64_json``."""
    return "b64_json" if (model or "").lower().startswith("gpt-image") else "url"


def _common(
    body: Extensions,
    *,
    n: int,
    size: tuple[int, int],
    model: str,
    defaults: ModelDefaults,
    settings: Settings,
) -> dict[str, Any]:
    steps = body.steps or body.step or defaults.steps
    cfg = body.cfg_scale if body.cfg_scale is not None else 7.0
    check_counts(steps, n, 1, cfg, settings)
    check_size(size[0], size[1], defaults, settings)
    choice = sampler_of(body)
    return {
        "negative_prompt": body.negative_prompt,
        "model": model,
        "width": size[0],
        "height": size[1],
        "steps": steps,
        "cfg_scale": cfg,
        "sampler": choice.sampler,
        "scheduler": choice.scheduler,
        "seed": seed_of(body),
        "batch_size": n,
    }


def generation_request(
    body: ImageGenerationRequest, *, model: str, defaults: ModelDefaults, settings: Settings
) -> GenerationRequest:
    size = parse_size(body.size, (defaults.width, defaults.height))
    return GenerationRequest(
        mode=Mode.TXT2IMG,
        prompt=body.prompt,
        **_common(body, n=body.n, size=size, model=model, defaults=defaults, settings=settings),
    )


def edit_request(
    body: ImageEditParams,
    *,
    init_image: str,
    mask: str | None,
    init_size: tuple[int, int],
    model: str,
    defaults: ModelDefaults,
    settings: Settings,
) -> GenerationRequest:
    """An edit: inpaint where ``mask`` (already white = edit) says, else img2img of the whole image."""
    size = parse_size(body.size, fit(init_size, defaults))
    default = EDIT_STRENGTH if mask else IMG2IMG_STRENGTH
    return GenerationRequest(
        mode=Mode.INPAINT if mask else Mode.IMG2IMG,
        prompt=body.prompt,
        init_images=(init_image,),
        mask=mask,
        denoising_strength=body.strength if body.strength is not None else default,
        inpainting_mask_invert=False,
        **_common(body, n=body.n, size=size, model=model, defaults=defaults, settings=settings),
    )


def variation_request(
    body: ImageVariationParams,
    *,
    init_image: str,
    init_size: tuple[int, int],
    model: str,
    defaults: ModelDefaults,
    settings: Settings,
) -> GenerationRequest:
    size = parse_size(body.size, fit(init_size, defaults))
    return GenerationRequest(
        mode=Mode.IMG2IMG,
        prompt=body.prompt,
        init_images=(init_image,),
        denoising_strength=body.strength if body.strength is not None else VARIATION_STRENGTH,
        **_common(body, n=body.n, size=size, model=model, defaults=defaults, settings=settings),
    )


def edit_mask(
    image_alpha: Image.Image | None,
    mask: Image.Image | None,
    mask_alpha: Image.Image | None,
    image_size: tuple[int, int],
) -> Image.Image | None:
    """The edit area as sdgate stores masks (greyscale, white = repaint), or None for no mask.

    OpenAI: the fully transparent parts of ``mask`` (or, with no mask, of the image) are edited,
    so the mask is the inverted alpha. A mask with no transparency at all is read as LocalAI's
    white = inpaint, the only other convention clients use.
    """
    if mask is not None:
        if mask.size != image_size:
            raise InvalidRequest(
                f"mask: is {mask.size[0]}x{mask.size[1]} but image is {image_size[0]}x{image_size[1]}; "
                "they must be the same size",
                field="mask",
            )
        if mask_alpha is not None:
            return ImageOps.invert(mask_alpha)
        log.info("openai: mask has no transparency; reading it as white = edit")
        return mask.convert("L")
    return ImageOps.invert(image_alpha) if image_alpha is not None else None


def image_items(images: list[str], fmt: str) -> list[dict[str, str]]:
    """``data`` entries: ``images`` are base64 strings (b64_json) or URLs (url)."""
    key = "b64_json" if fmt == "b64_json" else "url"
    return [{key: value} for value in images]


# -- errors ---------------------------------------------------------------------------------------


def error_body(err: SdgateError) -> tuple[int, dict[str, Any], dict[str, str]]:
    """(status, body, headers): OpenAI's ``{"error": {message, type, param, code}}``.

    A 5xx other than 503 answers ``x-should-retry: false``: it is a failed job (already retried by
    the job store where that helps) or a bug, and the openai client would otherwise re-run a long
    generation that fails the same way (it retries every 5xx by default).
    """
    status = err.status_code
    if status == 401:
        kind, code = "invalid_request_error", "invalid_api_key"
    elif status == 429:
        kind, code = "requests", "rate_limit_exceeded"
    elif status >= 500:
        kind, code = "server_error", err.code
    elif isinstance(err, ContentFiltered):  # a refused prompt, or an image the safety checker refused
        kind, code = "invalid_request_error", "content_policy_violation"
    else:
        kind, code = "invalid_request_error", None if err.code == "invalid_request" else err.code
    headers = {"x-should-retry": "false"} if status >= 500 and status != 503 else {}
    body = {"error": {"message": err.message, "type": kind, "param": err.field, "code": code}}
    return status, body, headers
