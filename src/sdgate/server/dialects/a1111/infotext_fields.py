"""The ``infotext`` request field: a pasted infotext fills every field the request left unset.

A1111 parses the text as ``/png-info`` does (``reference/a1111_api.md`` §1.1 and §4) and copies each
value into the request field its UI would paste it into, unless the request set that field
itself. Settings-like values (clip skip, ENSD, the model) go into ``override_settings`` unless the
request already overrides them. The model and VAE are taken only when this server has them: an
image made elsewhere still re-runs, on the current model.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TypeVar

from pydantic import ValidationError

from sdgate.core.errors import InvalidRequest
from sdgate.core.infotext import parse_infotext
from sdgate.server.dialects.a1111.protocol import CommonProcessing, Img2ImgRequest, Txt2ImgRequest

Body = TypeVar("Body", bound=CommonProcessing)

# (infotext key, request field), for both routes.
COMMON_FIELDS: tuple[tuple[str, str], ...] = (
    ("Prompt", "prompt"),
    ("Negative prompt", "negative_prompt"),
    ("Steps", "steps"),
    ("Sampler", "sampler_name"),
    ("Schedule type", "scheduler"),
    ("CFG scale", "cfg_scale"),
    ("Seed", "seed"),
    ("Size-1", "width"),
    ("Size-2", "height"),
    ("Variation seed", "subseed"),
    ("Variation seed strength", "subseed_strength"),
    ("Seed resize from-1", "seed_resize_from_w"),
    ("Seed resize from-2", "seed_resize_from_h"),
    ("Denoising strength", "denoising_strength"),
    ("Tiling", "tiling"),
    ("NGMS", "s_min_uncond"),
    ("Eta", "eta"),
    ("Eta DDIM", "eta"),
    ("Sigma churn", "s_churn"),
    ("Sigma tmin", "s_tmin"),
    ("Sigma tmax", "s_tmax"),
    ("Sigma noise", "s_noise"),
)
TXT2IMG_FIELDS: tuple[tuple[str, str], ...] = (
    ("Hires upscale", "hr_scale"),
    ("Hires steps", "hr_second_pass_steps"),
    ("Hires upscaler", "hr_upscaler"),
    ("Hires resize-1", "hr_resize_x"),
    ("Hires resize-2", "hr_resize_y"),
    ("Hires sampler", "hr_sampler_name"),
    ("Hires schedule type", "hr_scheduler"),
    ("Hires prompt", "hr_prompt"),
    ("Hires negative prompt", "hr_negative_prompt"),
)
IMG2IMG_FIELDS: tuple[tuple[str, str], ...] = (
    ("Image CFG scale", "image_cfg_scale"),
    ("Mask blur", "mask_blur"),
    ("Masked area padding", "inpaint_full_res_padding"),
)
# Infotext values spelled as UI choices: (key, field, {shown value: request value}).
CHOICES: tuple[tuple[str, str, Mapping[str, object]], ...] = (
    ("Masked content", "inpainting_fill", {"fill": 0, "original": 1, "latent noise": 2, "latent nothing": 3}),
    ("Inpaint area", "inpaint_full_res", {"Whole picture": False, "Only masked": True}),
    ("Mask mode", "inpainting_mask_invert", {"Inpaint masked": 0, "Inpaint not masked": 1}),
)
# (infotext key, override_settings key): what A1111 treats as settings rather than fields.
SETTINGS: tuple[tuple[str, str], ...] = (
    ("Clip skip", "CLIP_stop_at_last_layers"),
    ("ENSD", "eta_noise_seed_delta"),
)
HIRES_KEYS = ("Hires upscale", "Hires upscaler")
# Fields whose pasted text is taken as is; every other value is text standing for a JSON value
# ("20", "7.5", "True"), typed before the request model (which refuses numbers in strings) sees it.
TEXT_FIELDS = frozenset({"prompt", "negative_prompt", "sampler_name", "scheduler", "hr_upscaler",
                         "hr_sampler_name", "hr_scheduler", "hr_prompt", "hr_negative_prompt"})


def _typed(value: object) -> object:
    """An infotext value as the JSON value it spells: booleans, integers, finite floats; else text."""
    if not isinstance(value, str):
        return value
    if value in ("True", "False"):
        return value == "True"
    for parse in (int, float):
        try:
            number = parse(value)
        except ValueError:
            continue
        return number if number == number and abs(number) != float("inf") else value
    return value


def with_infotext(
    body: Body,
    *,
    resolve_model: Callable[[str], str | None] | None = None,
    resolve_vae: Callable[[str], str | None] | None = None,
) -> Body:
    """``body`` with the fields its ``infotext`` implies; the body itself when it has none.

    ``resolve_model`` maps the infotext's ``Model hash`` / ``Model`` to a checkpoint this server
    has, ``resolve_vae`` its ``VAE`` to a VAE file (None when there is none); without them the
    model and VAE are left alone.
    """
    if not body.infotext:
        return body
    parsed = parse_infotext(body.infotext)
    pairs = COMMON_FIELDS
    if isinstance(body, Txt2ImgRequest):
        pairs += TXT2IMG_FIELDS
    if isinstance(body, Img2ImgRequest):
        pairs += IMG2IMG_FIELDS
    values: dict[str, object] = {
        field: parsed[key] if field in TEXT_FIELDS else _typed(parsed[key])
        for key, field in pairs
        if key in parsed
    }
    if isinstance(body, Img2ImgRequest):
        for key, field, choices in CHOICES:
            if parsed.get(key) in choices:
                values[field] = choices[str(parsed[key])]
    if isinstance(body, Txt2ImgRequest) and "Denoising strength" in parsed:
        # A txt2img infotext carries a denoising strength only when it used hires fix.
        resized = str(parsed.get("Hires resize-1", 0)) != "0" or str(parsed.get("Hires resize-2", 0)) != "0"
        values["enable_hr"] = resized or any(key in parsed for key in HIRES_KEYS)
    values["override_settings"] = _settings(parsed, resolve_model, resolve_vae)
    explicit = body.model_dump(exclude_unset=True)
    merged = {**values, **explicit}
    if "override_settings" in explicit:  # the request's own overrides win key by key
        merged["override_settings"] = {**values["override_settings"], **(explicit["override_settings"] or {})}
    try:
        return type(body).model_validate(merged)
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(part) for part in error["loc"])
        raise InvalidRequest(f"infotext: {where}: {error['msg']}", field="infotext") from exc


def _settings(
    parsed: Mapping[str, object],
    resolve_model: Callable[[str], str | None] | None,
    resolve_vae: Callable[[str], str | None] | None,
) -> dict[str, object]:
    settings: dict[str, object] = {}
    for key, name in SETTINGS:
        if key in parsed:
            settings[name] = _typed(parsed[key])
    if resolve_model is not None:
        for key in ("Model hash", "Model"):
            model = resolve_model(str(parsed[key])) if key in parsed else None
            if model is not None:
                settings["sd_model_checkpoint"] = model
                break
    vae = resolve_vae(str(parsed["VAE"])) if resolve_vae is not None and "VAE" in parsed else None
    if vae is not None:
        settings["sd_vae"] = vae
    return settings
