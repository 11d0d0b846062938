"""Pure translation between the Hugging Face text-to-image task and sdgate's core types."""

from __future__ import annotations

from sdgate.core.engine import ModelDefaults
from sdgate.core.errors import InvalidRequest, SdgateError
from sdgate.core.requests import GenerationRequest, Mode
from sdgate.core.samplers import SamplerChoice, resolve_sampler
from sdgate.server.dialects.hf.protocol import DIFFUSERS_SCHEDULERS, TextToImageParameters, TextToImageRequest
from sdgate.server.validation import check_counts, check_size, resolve_seed
from sdgate.settings import Settings

DEFAULT_GUIDANCE = 7.0

ACCEPTED_FORMATS = {"image/png": "png", "image/jpeg": "jpeg", "image/jpg": "jpeg", "image/webp": "webp"}


def scheduler_choice(name: str | None) -> SamplerChoice:
    """A diffusers scheduler class name, or any A1111 sampler name or alias; unknown is a 400."""
    if name and name.strip() in DIFFUSERS_SCHEDULERS:
        sampler, scheduler = DIFFUSERS_SCHEDULERS[name.strip()]
        return resolve_sampler(sampler, scheduler)
    choice = resolve_sampler(name, None)
    if choice.fell_back:
        raise InvalidRequest(f"parameters.scheduler: unknown scheduler {name!r}", field="scheduler")
    return choice


def negative_of(params: TextToImageParameters) -> str:
    value = params.negative_prompt
    if isinstance(value, list):
        return ", ".join(p.strip() for p in value if p and p.strip())
    return value or ""


def size_of(params: TextToImageParameters, defaults: ModelDefaults) -> tuple[int, int]:
    """Top-level ``width``/``height`` win over the older ``target_size``; unset: the model's own."""
    target = params.target_size
    width = params.width or (target.width if target else None) or defaults.width
    height = params.height or (target.height if target else None) or defaults.height
    return width, height


def text_to_image_request(
    body: TextToImageRequest, *, model: str, defaults: ModelDefaults, settings: Settings
) -> GenerationRequest:
    params = body.parameters
    width, height = size_of(params, defaults)
    steps = params.num_inference_steps or defaults.steps
    cfg = params.guidance_scale if params.guidance_scale is not None else DEFAULT_GUIDANCE
    check_counts(steps, 1, 1, cfg, settings)
    check_size(width, height, defaults, settings)
    choice = scheduler_choice(params.scheduler)
    return GenerationRequest(
        mode=Mode.TXT2IMG,
        prompt=body.inputs,
        negative_prompt=negative_of(params),
        model=model,
        width=width,
        height=height,
        steps=steps,
        cfg_scale=cfg,
        sampler=choice.sampler,
        scheduler=choice.scheduler,
        seed=resolve_seed(params.seed, field="seed"),
    )


def output_format(accept: str | None) -> str:
    """The image format ``Accept`` asks for; anything else (``*/*``, JSON) gets PNG."""
    for part in (accept or "").lower().split(","):
        fmt = ACCEPTED_FORMATS.get(part.split(";")[0].strip())
        if fmt:
            return fmt
    return "png"


def error_body(err: SdgateError) -> dict[str, object]:
    return {"error": err.message}
