"""Pure translation between the native wire models and sdgate's core types."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from sdgate.core.engine import ModelDefaults
from sdgate.core.errors import InvalidRequest
from sdgate.core.jobs import Job, JobEventKind, Progress
from sdgate.core.requests import (
    ControlNetUnit,
    GenerationRequest,
    GraphRequest,
    HiresSettings,
    LoraRef,
    Mode,
    PostprocessRequest,
)
from sdgate.core.samplers import resolve_sampler
from sdgate.core.styles import PromptStyle, merge_prompt
from sdgate.server.dialects.native.protocol import JobCreate
from sdgate.server.imaging import STAND_IN_ID
from sdgate.server.validation import check_controlnet_count, check_counts, check_size, resolve_seed
from sdgate.settings import Settings

API = "/api/v1"
# img2img's strength when the client leaves it out (A1111's default).
DEFAULT_DENOISING_STRENGTH = 0.75
# What ``body_hash`` covers: the request as sent, with defaults filled in.
_JOB_FIELDS = frozenset({"priority", "callback_url", "metadata"})


def image_inputs(body: JobCreate) -> tuple[list[tuple[str, str]], tuple[str, str] | None]:
    """The client's init images and mask as ``(field, value)`` pairs, in order."""
    if body.init_image is not None and body.init_images:
        raise InvalidRequest("init_image: send init_image or init_images, not both", field="init_image")
    inits = [("init_image", body.init_image)] if body.init_image is not None else [
        (f"init_images.{i}", value) for i, value in enumerate(body.init_images or ())
    ]
    return inits, (("mask", body.mask) if body.mask is not None else None)


def infer_mode(body: JobCreate, *, has_init: bool, has_mask: bool) -> Mode:
    mode = body.mode or (Mode.INPAINT if has_mask else Mode.IMG2IMG if has_init else Mode.TXT2IMG)
    if mode is Mode.TXT2IMG and (has_init or has_mask):
        raise InvalidRequest("mode: txt2img takes no init_image or mask", field="mode")
    if mode is not Mode.TXT2IMG and not has_init:
        raise InvalidRequest(f"init_image: {mode.value} needs an init_image", field="init_image")
    if mode is Mode.INPAINT and not has_mask:
        raise InvalidRequest("mask: inpaint needs a mask", field="mask")
    if mode is Mode.IMG2IMG and has_mask:
        raise InvalidRequest("mask: img2img takes no mask (use mode inpaint)", field="mask")
    return mode


def generation_request(
    body: JobCreate,
    *,
    model: str,
    defaults: ModelDefaults,
    settings: Settings,
    init_images: tuple[str, ...] = (),
    mask: str | None = None,
    styles: Sequence[PromptStyle] = (),
    restore_faces: str | None = None,
    controlnets: tuple[ControlNetUnit, ...] = (),
) -> GenerationRequest:
    """A native job body as a resolved ``GenerationRequest``: seeds drawn, sizes and steps filled
    from the model's defaults, sampler names canonical, images as image-store ids, ``styles`` (the
    body's, found by ``names.check``) merged into the prompts in order, as A1111 does;
    ``restore_faces`` is the body's face restorer as ``names.face_restorer`` found it;
    ``controlnets`` its units as ``controlnet_units`` resolved them."""
    mode = infer_mode(body, has_init=bool(init_images), has_mask=mask is not None)
    width = body.width if body.width is not None else defaults.width
    height = body.height if body.height is not None else defaults.height
    steps = body.steps if body.steps is not None else defaults.steps
    check_counts(steps, body.batch_size, body.n_iter, body.cfg_scale, settings)
    check_size(width, height, defaults, settings)
    choice = resolve_sampler(body.sampler, body.scheduler)
    if choice.fell_back:
        raise InvalidRequest(
            f"sampler: unknown sampler {choice.requested!r}; GET /api/v1/samplers lists them", field="sampler"
        )
    if choice.scheduler_fell_back:
        raise InvalidRequest(
            f"scheduler: unknown scheduler {body.scheduler!r}; GET /api/v1/schedulers lists them",
            field="scheduler",
        )
    strength = body.denoising_strength
    if mode is not Mode.TXT2IMG and strength is None:
        strength = DEFAULT_DENOISING_STRENGTH
    prompt, negative_prompt = body.prompt, body.negative_prompt
    for style in styles:
        prompt = merge_prompt(style.prompt, prompt)
        negative_prompt = merge_prompt(style.negative_prompt, negative_prompt)
    fields = body.model_dump(
        exclude={"prompt", "negative_prompt", "mode", "model", "width", "height", "steps", "sampler",
                 "scheduler", "seed", "subseed", "init_image", "init_images", "mask", "denoising_strength",
                 "hires", "loras", "styles", "restore_faces", "controlnets",
                 *_JOB_FIELDS}
    )
    return GenerationRequest(
        **fields,
        prompt=prompt,
        negative_prompt=negative_prompt,
        mode=mode,
        model=model,
        width=width,
        height=height,
        steps=steps,
        sampler=choice.sampler,
        scheduler=choice.scheduler,
        seed=resolve_seed(body.seed, field="seed"),
        subseed=resolve_seed(body.subseed, field="subseed"),
        init_images=init_images,
        mask=mask,
        denoising_strength=strength,
        hires=HiresSettings(**body.hires.model_dump()) if body.hires is not None else None,
        loras=tuple(LoraRef(**lora.model_dump()) for lora in body.loras),
        styles=tuple(body.styles),
        restore_faces=restore_faces,
        controlnets=controlnets,
    )


# (a ControlNet's model or module name, the field it came from) -> the catalog's / canonical name.
NameResolver = Callable[[str, str], str]


def controlnet_units(
    body: JobCreate, *, resolve_model: NameResolver, resolve_module: NameResolver, has_init: bool,
    settings: Settings,
) -> tuple[ControlNetUnit, ...]:
    """The body's ControlNet units with their names resolved (a 404 / 400 naming
    ``controlnets[i].model`` / ``.module``) and stand-in image ids (``server.imaging``): the
    images are stored once everything else passed (``control_images``)."""
    check_controlnet_count(len(body.controlnets), settings, field="controlnets")
    units = []
    for i, unit in enumerate(body.controlnets):
        field = f"controlnets[{i}]"
        if unit.image is None and not has_init:
            raise InvalidRequest(f"{field}.image: a control image is required (or an init_image to use)",
                                 field=f"{field}.image")
        if unit.guidance_start > unit.guidance_end:
            raise InvalidRequest(f"{field}.guidance_start: must be at most guidance_end",
                                 field=f"{field}.guidance_start")
        units.append(ControlNetUnit(
            **unit.model_dump(exclude={"model", "module", "image", "mask"}),
            model=resolve_model(unit.model, f"{field}.model"),
            module=resolve_module(unit.module, f"{field}.module"),
            image=STAND_IN_ID if unit.image is not None else None,
            mask=STAND_IN_ID if unit.mask is not None else None,
        ))
    return tuple(units)


def body_for_hash(body: JobCreate) -> dict[str, Any]:
    """What two requests must share to be "the same" under one Idempotency-Key."""
    return body.model_dump(mode="json")


# -- rendering ------------------------------------------------------------------------------------


def link(base: str, path: str) -> str:
    """``path`` (absolute-path form) under ``base`` (the public URL, or "" for relative links)."""
    return base.rstrip("/") + path


def image_url(base: str, image_id: str) -> str:
    return link(base, f"{API}/images/{image_id}")


def request_echo(request: GenerationRequest | PostprocessRequest | GraphRequest) -> dict[str, Any]:
    """The request as it runs, under the wire names (``init_image`` is the first init image); a
    job of another kind (extras, a ComfyUI graph) as it is stored."""
    data = request.model_dump(mode="json")
    if isinstance(request, GraphRequest):
        return data
    data["init_images"] = list(request.init_images)
    data["init_image"] = request.init_images[0] if request.init_images else None
    return data


def progress_out(progress: Progress) -> dict[str, Any]:
    return {
        "step": progress.iteration * progress.steps + progress.step,
        "total": progress.iterations * progress.steps,
        "eta_s": None if progress.eta_s is None else round(progress.eta_s, 3),
        "fraction": round(progress.fraction, 4),
        "iteration": progress.iteration,
        "iterations": progress.iterations,
    }


def job_out(
    job: Job,
    *,
    base: str = "",
    position: int | None = None,
    webhook: dict[str, Any] | None = None,
    image_data: dict[str, str] | None = None,
) -> dict[str, Any]:
    """A job under the wire names; ``image_data`` (image id -> base64) inlines the files."""
    path = f"{API}/jobs/{job.id}"
    result = None
    if job.result is not None:
        r = job.result
        result = {
            "images": [
                {"id": img.id, "url": image_url(base, img.id), "seed": img.seed, "subseed": img.subseed,
                 "width": img.width, "height": img.height, "infotext": img.infotext,
                 "filtered": img.filtered, "data": image_data.get(img.id) if image_data else None}
                for img in r.images
            ],
            "model": r.model_name, "sampler": r.sampler, "scheduler": r.scheduler, "width": r.width,
            "height": r.height, "steps": r.steps, "interrupted": r.interrupted, "notes": list(r.notes),
            "timings": dict(r.timings),
        }
    return {
        "id": job.id,
        "state": job.state.value,
        "position": position,
        "created_at": job.created_at.isoformat(),
        "started_at": job.started_at.isoformat() if job.started_at else None,
        "finished_at": job.finished_at.isoformat() if job.finished_at else None,
        "priority": job.priority,
        "attempts": job.attempts,
        "metadata": job.metadata,
        "request": request_echo(job.request),
        "progress": progress_out(job.progress) if job.progress is not None else None,
        "result": result,
        "error": dict(job.error) if job.error else None,
        "webhook": webhook,
        "links": {"self": link(base, path), "events": link(base, f"{path}/events"),
                  "cancel": link(base, f"{path}/cancel")},
    }


def event_data(kind: JobEventKind, job: Job, *, base: str = "") -> dict[str, Any]:
    """An event's ``data``: progress is small; a state change carries the whole job."""
    if kind is JobEventKind.PROGRESS:
        progress = job.progress or Progress()
        return {"job_id": job.id, **progress_out(progress)}
    return {"job_id": job.id, **job_out(job, base=base)}


def as_utc(value: datetime | None, field: str) -> datetime | None:
    """A query's datetime in UTC (naive means UTC). One past the ends of the calendar in UTC (e.g.
    0001-01-01T00:00+01:00) is that end: as a bound it filters the same."""
    if value is None:
        return None
    try:
        return value.astimezone(UTC) if value.tzinfo is not None else value.replace(tzinfo=UTC)
    except OverflowError:
        end = datetime.min if value.year == datetime.min.year else datetime.max
        return end.replace(tzinfo=UTC)


def encode_cursor(seq: int) -> str:
    return base64.urlsafe_b64encode(f"s{seq}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> int:
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        if not text.startswith("s"):
            raise ValueError(cursor)
        return int(text[1:])
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise InvalidRequest("cursor: not a cursor this API returned", field="cursor") from None
