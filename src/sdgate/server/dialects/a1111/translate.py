"""Pure translation between A1111 wire models and sdgate's core types."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from sdgate.core.engine import ModelDefaults
from sdgate.core.errors import InvalidRequest
from sdgate.core.infotext import A1111_VERSION
from sdgate.core.requests import GenerationRequest, Mode
from sdgate.core.results import GenerationResult
from sdgate.core.samplers import resolve_sampler
from sdgate.server.dialects.a1111.protocol import CommonProcessing, Txt2ImgRequest
from sdgate.server.validation import check_counts, check_size, resolve_seed
from sdgate.settings import Settings

# Fields whose non-default values we cannot honour yet: (field, default, reason).
_UNSUPPORTED: tuple[tuple[str, object, str], ...] = (
    ("enable_hr", False, "hires fix is not supported yet"),
    ("restore_faces", (None, False), "no face restorer is installed"),
    ("tiling", (None, False), "tiling is not supported yet"),
    ("subseed_strength", 0.0, "variation seeds are not supported yet"),
    ("refiner_checkpoint", (None, "", "None"), "refiners are not supported yet"),
    ("firstphase_width", 0, "firstphase sizes need hires fix, which is not supported yet"),
    ("firstphase_height", 0, "firstphase sizes need hires fix, which is not supported yet"),
)


def check_unsupported(body: CommonProcessing) -> None:
    data = body.model_dump()
    for name, default, reason in _UNSUPPORTED:
        if name not in data:
            continue
        allowed = default if isinstance(default, tuple) else (default,)
        if data[name] not in allowed:
            raise InvalidRequest(f"{name}: {reason}", field=name)
    if body.script_name:
        raise InvalidRequest(f"script_name: Script '{body.script_name}' not found", field="script_name")
    for key in body.alwayson_scripts or {}:
        raise InvalidRequest(f"alwayson_scripts: always on script {key} not found", field="alwayson_scripts")


def override_value(body: CommonProcessing, key: str) -> Any:
    return (body.override_settings or {}).get(key)


def txt2img_request(
    body: Txt2ImgRequest, *, model: str, defaults: ModelDefaults, settings: Settings
) -> GenerationRequest:
    """An A1111 txt2img payload as a resolved ``GenerationRequest`` (seeds drawn, names canonical)."""
    check_unsupported(body)
    check_counts(body.steps, body.batch_size, body.n_iter, body.cfg_scale, settings)
    check_size(body.width, body.height, defaults, settings)
    choice = resolve_sampler(body.sampler_name or body.sampler_index, body.scheduler)
    if choice.fell_back:
        raise InvalidRequest(
            f"sampler_name: unknown sampler {choice.requested!r}; GET /sdapi/v1/samplers lists them",
            field="sampler_name",
        )
    clip_skip = override_value(body, "CLIP_stop_at_last_layers")
    ensd = override_value(body, "eta_noise_seed_delta")
    return GenerationRequest(
        mode=Mode.TXT2IMG,
        prompt=body.prompt,
        negative_prompt=body.negative_prompt,
        model=model,
        width=body.width,
        height=body.height,
        steps=body.steps,
        cfg_scale=body.cfg_scale,
        sampler=choice.sampler,
        scheduler=choice.scheduler,
        seed=resolve_seed(body.seed, field="seed"),
        subseed=resolve_seed(body.subseed, field="subseed"),
        batch_size=body.batch_size,
        n_iter=body.n_iter,
        clip_skip=_int_setting(clip_skip, 1, "override_settings.CLIP_stop_at_last_layers"),
        eta=body.eta,
        s_churn=body.s_churn,
        s_tmin=body.s_tmin,
        s_tmax=body.s_tmax,
        s_noise=body.s_noise,
        eta_noise_seed_delta=_int_setting(ensd, 0, "override_settings.eta_noise_seed_delta"),
        styles=tuple(body.styles or ()),
    )


def _int_setting(value: Any, default: int, field: str) -> int:
    if value is None:
        return default
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise InvalidRequest(f"{field}: must be a number, got {value!r}", field=field) from None
    if not number.is_integer() or number < 0:
        raise InvalidRequest(f"{field}: must be a whole number >= 0, got {value!r}", field=field)
    return int(number)


def parameters_echo(body: CommonProcessing) -> dict[str, Any]:
    """A1111's ``parameters``: the request with defaults filled in, as sent (seed stays -1)."""
    return body.model_dump(mode="json")


def info_json(
    body: CommonProcessing,
    request: GenerationRequest,
    result: GenerationResult,
    *,
    model_name: str,
    created_at: datetime | None = None,
) -> str:
    """``info``: a JSON *string* with ``Processed.js()``'s keys in A1111's order."""
    images = result.images
    seeds = [img.seed for img in images] or request.seeds()
    subseeds = [img.subseed for img in images] or request.subseeds()
    prompts = list(result.prompts) or [request.prompt] * len(seeds)
    negatives = list(result.negative_prompts) or [request.negative_prompt] * len(seeds)
    timestamp = (created_at or datetime.now(UTC)).strftime("%Y%m%d%H%M%S")
    info: dict[str, Any] = {
        "prompt": request.prompt,
        "all_prompts": prompts,
        "negative_prompt": request.negative_prompt,
        "all_negative_prompts": negatives,
        "seed": seeds[0] if seeds else request.seed,
        "all_seeds": seeds,
        "subseed": subseeds[0] if subseeds else request.subseed,
        "all_subseeds": subseeds,
        "subseed_strength": request.subseed_strength,
        "width": result.width or request.width,
        "height": result.height or request.height,
        "sampler_name": result.sampler or request.sampler,
        "cfg_scale": request.cfg_scale,
        "steps": result.steps or request.steps,
        "batch_size": request.batch_size,
        "restore_faces": False,
        "face_restoration_model": None,
        "sd_model_name": result.model_name or model_name,
        "sd_model_hash": result.model_hash,
        "sd_vae_name": None,
        "sd_vae_hash": None,
        "seed_resize_from_w": body.seed_resize_from_w,
        "seed_resize_from_h": body.seed_resize_from_h,
        "denoising_strength": body.denoising_strength,
        "extra_generation_params": _extra_params(result),
        "index_of_first_image": 0,
        "infotexts": [img.infotext for img in images],
        "styles": list(request.styles),
        "job_timestamp": timestamp,
        "clip_skip": request.clip_skip,
        "is_using_inpainting_conditioning": False,
        "version": A1111_VERSION,
    }
    return json.dumps(info)


def _extra_params(result: GenerationResult) -> dict[str, Any]:
    extra: dict[str, Any] = {"Schedule type": result.scheduler} if result.scheduler else {}
    if result.notes:
        extra["Notes"] = "; ".join(result.notes)
    return extra


def progress_fraction(iteration: int, iterations: int, step: int, steps: int) -> float:
    """A1111's formula: 0.01 + job_no/job_count + (step/steps)/job_count, capped at 1."""
    if iterations <= 0:
        return 0.0
    within = step / steps if steps > 0 else 0.0
    return min(1.0, 0.01 + iteration / iterations + within / iterations)


def sd_model_item(info: Any) -> dict[str, Any]:
    return {
        "title": info.title,
        "model_name": info.name,
        "hash": info.short_hash,
        "sha256": info.sha256,
        "filename": str(info.filename),
        "config": str(info.config) if info.config else None,
    }


def unknown_fields(body: CommonProcessing) -> Sequence[str]:
    return sorted((body.model_extra or {}).keys())
