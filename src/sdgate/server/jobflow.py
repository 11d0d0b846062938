"""Submitting jobs and waiting for them: shared by every dialect's routes."""

from __future__ import annotations

import asyncio
import base64
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from sdgate.core import controlnet as core_controlnet
from sdgate.core.engine import memory_budget
from sdgate.core.errors import ContentFiltered, InvalidRequest, ModelNotFound, error_from_dict
from sdgate.core.jobs import ControlAction, Job, JobState
from sdgate.core.limits import weights_bytes
from sdgate.core.models import AssetFile, ModelInfo
from sdgate.core.requests import GenerationRequest, GraphRequest, PostprocessRequest
from sdgate.core.upscalers import check_upscaler
from sdgate.server.admission import admit
from sdgate.server.audit import note_filtered, note_finished, note_submitted
from sdgate.server.auth import Principal
from sdgate.server.services import Services
from sdgate.server.validation import (
    check_controlnet_count,
    check_metadata,
    check_request,
    controlnet_family,
    find_controlnet,
)

log = logging.getLogger("sdgate.server")


async def submit(
    services: Services,
    request: GenerationRequest | PostprocessRequest | GraphRequest,
    *,
    dialect: str,
    principal: Principal,
    priority: int = 0,
    metadata: dict[str, Any] | None = None,
    idempotency_key: tuple[str, str] | None = None,
) -> Job:
    """Check ``request`` and ``metadata`` against the limits (``check_submission``), then queue it
    as ``principal``'s job, within its own limits (the store counts its jobs as it inserts: over
    them, ``TooManyJobs``): a request either becomes a job or is refused leaving nothing behind."""

    def create() -> Job:
        check_submission(services, request, metadata)
        with admit(services, principal, request) as reservation:
            return services.store.submit(
                request,
                dialect=dialect,
                owner=principal.id,
                priority=priority,
                metadata=metadata,
                max_owner_jobs=principal.limits.max_queued_jobs,
                idempotency_key=idempotency_key,
                reservation=reservation,
            )

    try:
        job = await run_in_threadpool(create)
    except ContentFiltered:
        note_filtered()
        raise
    prompt = getattr(request, "prompt", None) if services.settings.audit_prompts else None
    note_submitted(job, images=request.image_count, prompt=prompt)
    services.metrics.jobs_submitted.labels(dialect).inc()
    log.info("job %s queued (%s, %d image(s))", job.id, dialect, request.image_count)
    return job


def check_submission(
    services: Services, request: GenerationRequest | PostprocessRequest | GraphRequest, metadata: Any = None
) -> None:
    """The last check before a job exists, whichever dialect, script or retry submits it: the
    request as the engine will run it (every derived size, steps, counts, text, memory) and the
    job's metadata, against ``services.settings`` (sync: it may count a long prompt's tokens)."""
    settings = services.settings
    check_metadata(metadata, settings)
    if isinstance(request, PostprocessRequest):
        check_postprocess(services, request)
        return
    if isinstance(request, GraphRequest):
        check_graph(services, request)
        return
    info: ModelInfo | None = None
    try:
        info = services.catalog.resolve(request.model)
        defaults = services.model_defaults(info)
    except ModelNotFound:
        if services.engine is None:
            raise
        # An engine with models of its own (the null engine without any files).
        defaults = services.engine.model_defaults(request.model)
    if request.hires is not None:
        check_upscaler(request.hires.upscaler, services.catalog, field="hr_upscaler", latent=True)
    family = info.family if info is not None else None
    controlnet_weights = check_controlnets(services, request, family=family)
    check_request(
        request,
        defaults,
        settings,
        family=family,
        weights=_weights(services, request, info),
        controlnet_weights=controlnet_weights,
        budget=memory_budget(services.engine),
    )


def check_controlnets(services: Services, request: GenerationRequest, *, family: str | None) -> int:
    """Each ControlNet unit as the engine will run it (every dialect checked them under its own
    field names first): within ``max_controlnets``, a model this server has (of the request's
    model's family where both are known), a preprocessor that runs here, a control image (its
    own, or on img2img the init image). Returns the bytes of the ControlNet files the units load
    (each file once), for the job's memory estimate."""
    units = request.controlnets
    if not units:
        return 0
    check_controlnet_count(len(units), services.settings, field="controlnets")
    files = services.catalog.list_files("controlnet")
    paths: set[Path] = set()
    for i, unit in enumerate(units):
        field = f"controlnets[{i}]"
        paths.add(_controlnet_file(files, unit.model, field=f"{field}.model", family=family).path)
        resolve_preprocessor(services, unit.module, field=f"{field}.module")
        if unit.image is None and not request.init_images:
            raise InvalidRequest(f"{field}.image: a control image is required (txt2img has no init "
                                 "image to use)", field=f"{field}.image")
        if unit.guidance_start > unit.guidance_end:
            raise InvalidRequest(f"{field}.guidance_start: must be at most guidance_end "
                                 f"({unit.guidance_start} > {unit.guidance_end})",
                                 field=f"{field}.guidance_start")
    return sum(weights_bytes(path) for path in paths)


def resolve_controlnet(services: Services, name: str, *, field: str, family: str | None = None) -> str:
    """The catalog's name of the ControlNet ``name`` means (with or without a `` [hash]``): a 404
    naming ``field`` when the server has none such (never another one in its place); a 400 when
    it was made for another family than the request's model."""
    return _controlnet_file(services.catalog.list_files("controlnet"), name, field=field, family=family).name


def _controlnet_file(files: Sequence[AssetFile], name: str, *, field: str, family: str | None) -> AssetFile:
    found = find_controlnet(files, name)
    if found is None:
        raise ModelNotFound(
            f"{field}: ControlNet model {name!r} not found (GET /controlnet/model_list lists them)",
            field=field,
        )
    if family is not None:
        made_for = controlnet_family(found.path)
        if made_for is not None and made_for != family:
            raise InvalidRequest(
                f"{field}: ControlNet model {found.name!r} is for {made_for} models, not {family}",
                field=field,
            )
    return found


def resolve_preprocessor(services: Services, name: str, *, field: str) -> str:
    """The canonical name of the preprocessor ``name`` means (its aliases too), or a 400 naming
    ``field``."""
    try:
        return core_controlnet.resolve_module(name, services.settings.resolved_models_dir).name
    except InvalidRequest as exc:
        reason = exc.message.removeprefix("module: ")
        raise InvalidRequest(f"{field}: {reason}", field=field) from None


def check_graph(services: Services, request: GraphRequest) -> None:
    """A ComfyUI graph was checked node by node when its dialect validated it (sizes, steps, batch
    sizes and texts against these same settings, ``core.comfy.validate``); what a resubmission must
    still meet: images it writes within ``max_batch_images``, and its input images stored."""
    limit = services.settings.max_batch_images
    if not 1 <= request.image_count <= limit:
        raise InvalidRequest(f"a prompt may write 1 to {limit} images, not {request.image_count}",
                             field="prompt")


def check_postprocess(services: Services, request: PostprocessRequest) -> None:
    """An extras job's own checks (its pictures' sizes were checked when they were stored): a
    picture to process, at most ``max_batch_images``, and upscalers this server has."""
    limit = services.settings.max_batch_images
    if not 1 <= request.image_count <= limit:
        raise InvalidRequest(f"an extras job takes 1 to {limit} images", field="init_images")
    check_upscaler(request.upscaler_1, services.catalog, field="upscaler_1", latent=False)
    if request.second_upscaler is not None:
        check_upscaler(request.second_upscaler, services.catalog, field="upscaler_2", latent=False)


def _weights(services: Services, request: GenerationRequest, info: ModelInfo | None) -> int:
    """Bytes of the weights a job keeps on the device: its model's, and a refiner's or hires
    checkpoint's when another model."""
    files = {info.filename} if info is not None else set()
    second = [request.refiner, request.hires.checkpoint if request.hires is not None else None]
    for name in second:
        if name is None:
            continue
        try:
            files.add(services.catalog.resolve(name).filename)
        except ModelNotFound:
            continue  # the engine refuses it by name when the job runs
    return sum(weights_bytes(path) for path in files)


async def wait_for(services: Services, job: Job, http_request: Request | None = None) -> Job:
    """Wait until ``job`` is terminal. The job keeps running if the client goes away, unless
    ``cancel_on_disconnect`` is set. The call's audit record gets the job's GPU seconds."""
    job = await _wait_terminal(services, job, http_request)
    note_finished(job)
    return job


async def _wait_terminal(services: Services, job: Job, http_request: Request | None) -> Job:
    waiter = asyncio.ensure_future(services.events.wait_terminal(services.store, job.id))
    if http_request is None or not services.settings.cancel_on_disconnect:
        return await waiter
    try:
        while True:
            done, _ = await asyncio.wait({waiter}, timeout=1.0)
            if done:
                return waiter.result()
            if await http_request.is_disconnected():
                log.info("client went away; cancelling job %s", job.id)
                await run_in_threadpool(services.store.request_control, job.id, ControlAction.CANCEL)
                return await waiter
    finally:
        waiter.cancel()


async def run_blocking(
    services: Services,
    request: GenerationRequest | PostprocessRequest,
    http_request: Request,
    *,
    dialect: str,
    principal: Principal,
    metadata: dict[str, Any] | None = None,
) -> Job:
    """Submit, wait, and raise the job's own error if it failed (A1111-style blocking routes)."""
    job = await submit(services, request, dialect=dialect, principal=principal, metadata=metadata)
    job = await wait_for(services, job, http_request)
    if job.state == JobState.FAILED:
        raise error_from_dict(job.error or {"code": "internal_error", "message": "job failed"})
    if job.state == JobState.CANCELLED and not (job.result and job.result.images):
        raise error_from_dict({"code": "job_cancelled", "message": f"job {job.id} was cancelled"})
    return job


async def image_bytes(services: Services, job: Job) -> list[bytes]:
    if job.result is None:
        return []
    ids = [img.id for img in job.result.images]
    return await run_in_threadpool(lambda: [services.images.get(i) for i in ids])


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")
