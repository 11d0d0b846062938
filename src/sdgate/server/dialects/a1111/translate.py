"""Pure translation between A1111 wire models and sdgate's core types."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from sdgate.core import restorers
from sdgate.core.engine import ModelDefaults
from sdgate.core.errors import InvalidRequest, ModelNotFound
from sdgate.core.infotext import A1111_VERSION, parse_infotext
from sdgate.core.models import list_files
from sdgate.core.prompts import extract_networks
from sdgate.core.requests import GenerationRequest, HiresSettings, Mode
from sdgate.core.results import GenerationResult
from sdgate.core.samplers import resolve_sampler
from sdgate.core.styles import STYLES_FILE, apply_styles, load_styles
from sdgate.server.dialects.a1111.protocol import CommonProcessing, Img2ImgRequest, Txt2ImgRequest
from sdgate.server.validation import check_counts, check_size, resolve_seed
from sdgate.settings import Settings

# Fields whose non-default values we cannot honour yet: (field, default, reason).
_UNSUPPORTED: tuple[tuple[str, object, str], ...] = ()


def check_unsupported(body: CommonProcessing) -> None:
    data = body.model_dump()
    for name, default, reason in _UNSUPPORTED:
        if name not in data:
            continue
        allowed = default if isinstance(default, tuple) else (default,)
        if data[name] not in allowed:
            raise InvalidRequest(f"{name}: {reason}", field=name)
    for key in body.alwayson_scripts or {}:
        if key.lower() == "controlnet":
            continue  # the ControlNet extension's units: ``controlnet.parse_units``
        raise InvalidRequest(f"alwayson_scripts: always on script {key} not found", field="alwayson_scripts")


def override_value(body: CommonProcessing, key: str) -> Any:
    return (body.override_settings or {}).get(key)


# A checkpoint name as a client sends it -> the catalog's name for it (raises ModelNotFound).
CheckpointResolver = Callable[[str], str]
NO_REFINER = ("", "None", "none")  # A1111's "off" values of refiner_checkpoint
SAME_CHECKPOINT = ("", "Use same checkpoint")


def checkpoint_name(
    value: str | None, field: str, resolve: CheckpointResolver | None, off: tuple[str, ...]
) -> str | None:
    """A second checkpoint field (refiner, hires) as a catalog name; None when it is off. An unknown
    name is a 400 naming the field. Without a resolver the name goes on as sent (the engine checks)."""
    if value is None or value.strip() in off:
        return None
    if resolve is None:
        return value
    try:
        return resolve(value)
    except ModelNotFound:
        raise InvalidRequest(
            f"{field}: checkpoint {value!r} not found (GET /sdapi/v1/sd-models lists them)", field=field
        ) from None


def refiner_fields(
    body: CommonProcessing, resolve: CheckpointResolver | None
) -> tuple[str | None, float | None]:
    """(refiner, switch_at). A null ``refiner_switch_at`` with a checkpoint is refused: A1111 would
    then hand every step to the refiner, which is surely not what was meant."""
    name = checkpoint_name(body.refiner_checkpoint, "refiner_checkpoint", resolve, NO_REFINER)
    if name is None:
        return None, None
    switch_at = body.refiner_switch_at
    if switch_at is None or not 0.0 < switch_at < 1.0:
        raise InvalidRequest(
            f"refiner_switch_at: must be between 0 and 1, exclusive, with a refiner_checkpoint "
            f"(got {switch_at})",
            field="refiner_switch_at",
        )
    return name, switch_at


def txt2img_request(
    body: Txt2ImgRequest,
    *,
    model: str,
    defaults: ModelDefaults,
    settings: Settings,
    resolve_checkpoint: CheckpointResolver | None = None,
) -> GenerationRequest:
    """An A1111 txt2img payload as a resolved ``GenerationRequest`` (seeds drawn, names canonical;
    ``resolve_checkpoint`` names the refiner and hires checkpoints as the catalog does)."""
    check_unsupported(body)
    refiner, refiner_switch_at = refiner_fields(body, resolve_checkpoint)
    body = legacy_firstphase(body)
    check_counts(body.steps, body.batch_size, body.n_iter, body.cfg_scale, settings)
    check_size(body.width, body.height, defaults, settings)
    choice = resolve_sampler(body.sampler_name or body.sampler_index, body.scheduler)
    if choice.fell_back:
        raise InvalidRequest(
            f"sampler_name: unknown sampler {choice.requested!r}; GET /sdapi/v1/samplers lists them",
            field="sampler_name",
        )
    hires_sampler(body)  # checked with or without enable_hr: the schema lists the names
    clip_skip = override_value(body, "CLIP_stop_at_last_layers")
    prompt, negative_prompt = body.prompt, body.negative_prompt
    if body.styles:  # merged into the prompts before anything else, as A1111
        styles = load_styles(settings.data_dir / STYLES_FILE)
        prompt, negative_prompt = apply_styles(prompt, negative_prompt, body.styles, styles)
    if body.disable_extra_networks:  # A1111 still strips the tags; it only skips applying them
        prompt = extract_networks(prompt)[0]
    ensd = override_value(body, "eta_noise_seed_delta")
    return GenerationRequest(
        mode=Mode.TXT2IMG,
        prompt=prompt,
        negative_prompt=negative_prompt,
        model=model,
        width=body.width,
        height=body.height,
        steps=body.steps,
        cfg_scale=body.cfg_scale,
        sampler=choice.sampler,
        scheduler=choice.scheduler,
        seed=resolve_seed(body.seed, field="seed"),
        subseed=resolve_seed(body.subseed, field="subseed"),
        subseed_strength=body.subseed_strength,
        seed_resize_from_w=_seed_resize(body.seed_resize_from_w, "seed_resize_from_w", defaults, settings),
        seed_resize_from_h=_seed_resize(body.seed_resize_from_h, "seed_resize_from_h", defaults, settings),
        tiling=bool(body.tiling),
        batch_size=body.batch_size,
        n_iter=body.n_iter,
        clip_skip=_int_setting(clip_skip, 1, "override_settings.CLIP_stop_at_last_layers"),
        eta=body.eta,
        s_churn=body.s_churn,
        s_tmin=body.s_tmin,
        s_tmax=body.s_tmax,
        s_noise=body.s_noise,
        s_min_uncond=_s_min_uncond(body),
        eta_noise_seed_delta=_int_setting(ensd, 0, "override_settings.eta_noise_seed_delta"),
        styles=tuple(body.styles or ()),
        hires=hires_settings(body, resolve_checkpoint),
        refiner=refiner,
        refiner_switch_at=refiner_switch_at,
        restore_faces=_face_restorer(body, settings),
    )


def _face_restorer(body: CommonProcessing, settings: Settings) -> str | None:
    """restore_faces: A1111's ``face_restoration_model`` when set, else the installed one (a 400
    when none is); None when off."""
    if not body.restore_faces:
        return None
    files = list_files(settings.resolved_models_dir, "face_restorers")
    wanted = override_value(body, "face_restoration_model")
    return restorers.choose(files, wanted, field="restore_faces")


def legacy_firstphase(body: Txt2ImgRequest) -> Txt2ImgRequest:
    """Pre-1.0 hires fix: ``firstphase_width/height`` is the first pass and ``width``/``height``
    the hires target, as A1111 still reads them."""
    first_w, first_h = body.firstphase_width, body.firstphase_height
    if not first_w and not first_h:
        return body
    for name, value in (("firstphase_width", first_w), ("firstphase_height", first_h)):
        if value <= 0:
            raise InvalidRequest(f"{name}: must be > 0 when the other firstphase size is set", field=name)
    return body.model_copy(update={
        "width": first_w, "height": first_h, "hr_resize_x": body.width, "hr_resize_y": body.height,
        "firstphase_width": 0, "firstphase_height": 0,
    })  # fmt: skip


# txt2img's denoising_strength defaults to null in A1111's API, and hires fix then fails with a
# 500; webuiapi always sends 0.7, so a missing value means 0.7 here.
HIRES_DENOISING_DEFAULT = 0.7


def hires_settings(body: Txt2ImgRequest, resolve: CheckpointResolver | None = None) -> HiresSettings | None:
    """``enable_hr`` and the ``hr_*`` fields; "Use same ..." and null mean the first pass's."""
    if not body.enable_hr:
        return None
    sampler, scheduler = hires_sampler(body)
    strength = body.denoising_strength
    return HiresSettings(
        scale=body.hr_scale,
        resize_x=body.hr_resize_x,
        resize_y=body.hr_resize_y,
        upscaler=body.hr_upscaler or "Latent",
        second_pass_steps=body.hr_second_pass_steps,
        denoising_strength=HIRES_DENOISING_DEFAULT if strength is None else strength,
        sampler=sampler,
        scheduler=scheduler,
        prompt=body.hr_prompt,
        negative_prompt=body.hr_negative_prompt,
        checkpoint=checkpoint_name(body.hr_checkpoint_name, "hr_checkpoint_name", resolve, SAME_CHECKPOINT),
    )


def hires_sampler(body: Txt2ImgRequest) -> tuple[str | None, str | None]:
    """(sampler, scheduler) of the hires pass; (None, None): the first pass's ("Use same ...")."""
    hr_sampler = None if body.hr_sampler_name in ("", "Use same sampler") else body.hr_sampler_name
    hr_scheduler = None if body.hr_scheduler in ("", "Use same scheduler") else body.hr_scheduler
    if not (hr_sampler or hr_scheduler):
        return None, None
    choice = resolve_sampler(hr_sampler or body.sampler_name or body.sampler_index, hr_scheduler)
    if choice.fell_back:
        field = "hr_sampler_name"
        raise InvalidRequest(f"{field}: unknown sampler {choice.requested!r}", field=field)
    return choice.sampler, choice.scheduler


def img2img_request(
    body: Img2ImgRequest,
    *,
    model: str,
    defaults: ModelDefaults,
    settings: Settings,
    init_images: tuple[str, ...],
    mask: str | None,
    resolve_checkpoint: CheckpointResolver | None = None,
) -> GenerationRequest:
    """An A1111 img2img payload (its images already stored: ids) as a ``GenerationRequest``."""
    base = txt2img_request(
        Txt2ImgRequest(**body.model_dump(include=set(CommonProcessing.model_fields))),
        model=model, defaults=defaults, settings=settings, resolve_checkpoint=resolve_checkpoint,
    )
    strength = 0.75 if body.denoising_strength is None else body.denoising_strength
    checks = (
        ("denoising_strength", 0.0 <= strength <= 1.0, "must be between 0 and 1"),
        ("resize_mode", body.resize_mode in (0, 1, 2, 3), "must be 0, 1, 2 or 3"),
        ("inpainting_fill", body.inpainting_fill in (0, 1, 2, 3), "must be 0, 1, 2 or 3"),
        ("mask_blur", min(body.mask_blur_x, body.mask_blur_y, body.mask_blur or 0) >= 0, "must be >= 0"),
        ("inpaint_full_res_padding", body.inpaint_full_res_padding >= 0, "must be >= 0"),
    )
    for field, ok, why in checks:
        if not ok:
            raise InvalidRequest(f"{field}: {why}", field=field)
    blur_x, blur_y = body.mask_blur_x, body.mask_blur_y
    if body.mask_blur is not None:  # A1111: mask_blur sets both
        blur_x = blur_y = body.mask_blur
    return base.model_copy(update={
        "mode": Mode.INPAINT if mask is not None else Mode.IMG2IMG,
        "init_images": init_images,
        "mask": mask,
        "denoising_strength": strength,
        "resize_mode": body.resize_mode,
        "image_cfg_scale": body.image_cfg_scale,
        "mask_blur_x": blur_x,
        "mask_blur_y": blur_y,
        "inpainting_fill": body.inpainting_fill,
        "inpaint_full_res": bool(body.inpaint_full_res),
        "inpaint_full_res_padding": body.inpaint_full_res_padding,
        "inpainting_mask_invert": bool(body.inpainting_mask_invert),
        "mask_round": bool(body.mask_round),
        "initial_noise_multiplier": (
            1.0 if body.initial_noise_multiplier is None else body.initial_noise_multiplier
        ),
    })


def _seed_resize(value: int, field: str, defaults: ModelDefaults, settings: Settings) -> int:
    """-1 and 0 mean off (A1111 applies a seed resize only when both sides are > 0)."""
    if value in (-1, 0):
        return 0
    factor = defaults.vae_scale_factor
    if value < 0 or value > settings.max_side or value % factor:
        raise InvalidRequest(
            f"{field}: must be -1 or 0 (off) or a multiple of {factor} up to {settings.max_side} "
            f"for model {defaults.name}, got {value}",
            field=field,
        )
    return value


def _s_min_uncond(body: CommonProcessing) -> float:
    """NGMS: the request's value, else ``override_settings.s_min_uncond`` (A1111's opts), else 0."""
    value = body.s_min_uncond if body.s_min_uncond is not None else override_value(body, "s_min_uncond")
    if value is None:
        return 0.0
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if not 0 <= number < math.inf:
        raise InvalidRequest(f"s_min_uncond: must be a number >= 0, got {value!r}", field="s_min_uncond")
    return number


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
    grid_infotext: str | None = None,
) -> str:
    """``info``: a JSON *string* with ``Processed.js()``'s keys in A1111's order.

    ``grid_infotext``: a grid was prepended to the images, so its infotext leads ``infotexts``.
    """
    images = result.images
    first = parse_infotext(images[0].infotext) if images else {}  # the VAE used, if a file
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
        "restore_faces": request.restore_faces is not None,
        "face_restoration_model": request.restore_faces,
        "sd_model_name": result.model_name or model_name,
        "sd_model_hash": result.model_hash,
        "sd_vae_name": first.get("VAE"),
        "sd_vae_hash": first.get("VAE hash"),
        "seed_resize_from_w": body.seed_resize_from_w,
        "seed_resize_from_h": body.seed_resize_from_h,
        "denoising_strength": body.denoising_strength,
        "extra_generation_params": _extra_params(result),
        "index_of_first_image": 0 if grid_infotext is None else 1,
        "infotexts": ([] if grid_infotext is None else [grid_infotext]) + [img.infotext for img in images],
        "styles": list(request.styles),
        "job_timestamp": timestamp,
        "clip_skip": request.clip_skip,
        "is_using_inpainting_conditioning": False,
        "version": A1111_VERSION,
    }
    if result.filtered:
        # sdgate's own key (A1111 has no filter): indices into ``images`` (after the grid, if any) of
        # the images the safety checker replaced with black ones; extra_generation_params' Notes say so.
        first_image = info["index_of_first_image"]
        info["filtered_images"] = [first_image + i for i in result.filtered]
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


# Fields A1111 defines that sdgate accepts and does not act on: (field, defaults, why).
IGNORED: tuple[tuple[str, tuple[object, ...], str], ...] = (
    ("refiner_switch_at", (None,), "no refiner_checkpoint: nothing to switch to"),
    ("firstpass_image", (None, ""), "A1111 does not decode it either"),
    ("comments", (None, {}), "A1111 drops it too"),
    ("script_args", ([],), "no script_name"),
    ("force_task_id", (None, ""), "sdgate's task ids are its job ids"),
    ("latent_mask", (None, ""), "A1111 does not decode it either"),
)


def ignored_fields(body: CommonProcessing) -> list[tuple[str, str]]:
    """(field, why) for each field of ``body`` that is set to something sdgate will not act on."""
    data = body.model_dump()
    return [(name, why) for name, allowed, why in IGNORED if name in data and data[name] not in allowed]
