"""The native job lifecycle, as steps the routes call: submit, find, cancel, delete, retry, list.

Routes stay a few lines; everything here talks to the store through a thread (the store is sync).
Every step takes the caller's ``Principal``: a job (or image) of another principal is a 404, as if
it did not exist, for everyone but admins (``Principal.owns``).
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import datetime
from typing import Any

from starlette.concurrency import run_in_threadpool

from sdgate.core.errors import Conflict, InvalidRequest, NotFound
from sdgate.core.jobs import ControlAction, Job, JobEventKind, JobState
from sdgate.core.requests import GenerationRequest
from sdgate.jobs.idempotency import canonical_hash
from sdgate.jobs.retention import purge_job
from sdgate.jobs.webhooks import check_callback_url
from sdgate.server import jobflow
from sdgate.server.audit import note_finished
from sdgate.server.auth import Principal
from sdgate.server.deps import image_limits
from sdgate.server.dialects.native import images as native_images
from sdgate.server.dialects.native import names, translate
from sdgate.server.dialects.native.protocol import JobCreate
from sdgate.server.imaging import stand_ins
from sdgate.server.runtime import ServerRuntime
from sdgate.server.services import Services

log = logging.getLogger("sdgate.native")
DIALECT = "native"
# DELETE of a running job waits this long for it to stop at its next step.
DELETE_WAIT_S = 60.0
# The longest ``?wait=`` a caller may ask for: a long poll, not a blocking route.
MAX_WAIT_S = 60.0


# -- submit -----------------------------------------------------------------------------------------


def build_request(runtime: ServerRuntime, body: JobCreate, principal: Principal) -> GenerationRequest:
    """Checks the body and stores its images; the resolved request (sync: run it in a thread).
    Every name is checked first: an unknown one is a 404 and no job (``names``); an upload id names
    an image the caller may see (``check_image``)."""
    services = runtime.services
    model, styles = names.check(services.catalog, services.settings, body)
    restorer = names.face_restorer(services.settings, body.restore_faces)
    inits, mask = translate.image_inputs(body)
    controls = translate.controlnet_units(
        body,
        resolve_model=lambda name, field: jobflow.resolve_controlnet(services, name, field=field,
                                                                     family=model.family),
        resolve_module=lambda name, field: jobflow.resolve_preprocessor(services, name, field=field),
        has_init=bool(inits),
        settings=services.settings,
    )
    # Check everything cheap before storing any image.
    init_stand_ins, mask_stand_in = stand_ins(len(inits), mask=mask is not None)
    checked = translate.generation_request(
        body, model=model.name, defaults=services.model_defaults(model), settings=services.settings,
        init_images=init_stand_ins, mask=mask_stand_in, styles=styles, restore_faces=restorer,
        controlnets=controls,
    )
    if body.callback_url is not None:
        check_callback_url(body.callback_url, allow_private=services.settings.allow_private_callbacks)
    if not inits and mask is None and not any(u.image or u.mask for u in body.controlnets):
        return checked
    # The last check before a job runs again in jobflow.submit; here it comes before any image is
    # stored, so a refused request leaves nothing behind.
    jobflow.check_submission(services, checked, body.metadata)
    limits = image_limits(services)

    def visible(image_id: str) -> bool:
        return can_see_image(runtime, image_id, principal)

    init_ids = tuple(
        native_images.store_job_input(services.images, value, field=field, limits=limits, mode="RGB",
                                      visible=visible)
        for field, value in inits
    )
    mask_id = (
        native_images.store_job_input(services.images, mask[1], field="mask", limits=limits, mode="L",
                                      visible=visible)
        if mask else None
    )
    units = tuple(
        unit.model_copy(update={
            name: native_images.store_job_input(services.images, value, field=f"controlnets[{i}].{name}",
                                                limits=limits, mode=mode, visible=visible)
            for name, mode, value in (("image", "RGB", wire.image), ("mask", "L", wire.mask))
            if value is not None
        })
        for i, (unit, wire) in enumerate(zip(controls, body.controlnets, strict=True))
    )  # fmt: skip
    return checked.model_copy(update={"init_images": init_ids, "mask": mask_id, "controlnets": units})


async def submit(runtime: ServerRuntime, body: JobCreate, *, principal: Principal,
                 idempotency_key: str | None) -> tuple[Job, bool]:
    """The job for ``body`` and whether it is new (False: an ``Idempotency-Key`` replay)."""
    services = runtime.services

    async def create(key: tuple[str, str] | None = None) -> str:
        request = await run_in_threadpool(build_request, runtime, body, principal)
        job = await jobflow.submit(services, request, dialect=DIALECT, principal=principal,
                                   priority=body.priority, metadata=body.metadata, idempotency_key=key)
        if body.callback_url is not None:
            await run_in_threadpool(runtime.webhooks.register, job.id, body.callback_url)
        return job.id

    if idempotency_key is None:
        job_id, created = await create(), True
    else:
        body_hash = canonical_hash(translate.body_for_hash(body))
        job_id, created = await runtime.keys.run(principal.id or "", idempotency_key, body_hash, create)
    return await run_in_threadpool(get, services, job_id, principal), created


# -- reading ----------------------------------------------------------------------------------------


def get(services: Services, job_id: str, principal: Principal) -> Job:
    """The job, if the caller may see it: its own, or any for an admin; else the same 404 as a job
    that does not exist."""
    job = services.store.get(job_id)
    if not principal.owns(job.owner):
        raise NotFound(f"job {job_id} not found")
    return job


def can_see_image(runtime: ServerRuntime, image_id: str, principal: Principal) -> bool:
    """Whether ``principal`` may read ``image_id``: an admin any; anyone else an image it uploaded
    or one of its own jobs refers to (sync)."""
    if principal.is_admin:
        return True
    return runtime.uploads.visible_to(image_id, principal.id, runtime.services.store)


def check_image(runtime: ServerRuntime, image_id: str, principal: Principal) -> None:
    """``NotFound`` (the same as a missing image) for an image ``principal`` may not read."""
    if not can_see_image(runtime, image_id, principal):
        raise NotFound(f"image {image_id} not found")


async def wait_until_done(services: Services, job: Job, wait: float) -> Job:
    """A long poll: the job once it has ended, or as it is after ``wait`` seconds. A job that ended
    while the call waited gives the call's audit record its GPU seconds."""
    if wait <= 0 or job.state.terminal:
        return job
    try:
        job = await services.events.wait_terminal(services.store, job.id, timeout=wait)
    except TimeoutError:
        job = await run_in_threadpool(services.store.get, job.id)
    if job.state.terminal:
        note_finished(job)
    return job


def render(runtime: ServerRuntime, job: Job, *, include_images: bool = False) -> dict[str, Any]:
    """One job as the API shows it (sync); with ``include_images``, each image's file inline."""
    position = runtime.services.store.position(job.id) if job.state is JobState.QUEUED else None
    webhook = runtime.webhooks.status([job.id]).get(job.id)
    image_data = None
    if include_images and job.result is not None:
        store = runtime.services.images
        image_data = {i.id: base64.b64encode(store.get(i.id)).decode("ascii") for i in job.result.images}
    return translate.job_out(job, base=runtime.base, position=position, webhook=webhook,
                             image_data=image_data)


def inline_event_images(runtime: ServerRuntime, message: str) -> str:
    """One SSE message (``events.sse_message``); a ``succeeded`` one gets each image's file inline
    (base64 ``data``), as ``?include=images`` gives it on the job routes. Others pass unchanged, and
    so does an image gone from the store (the client still has its URL)."""
    lines = message.rstrip("\n").split("\n")
    if f"event: {JobEventKind.SUCCEEDED.value}" not in lines or not lines[-1].startswith("data: "):
        return message
    data = json.loads(lines[-1].removeprefix("data: "))
    rows = (data.get("result") or {}).get("images") or []
    store = runtime.services.images
    for row in rows:
        with contextlib.suppress(NotFound, OSError):
            row["data"] = base64.b64encode(store.get(str(row["id"]))).decode("ascii")
    lines[-1] = "data: " + json.dumps(data, separators=(",", ":"))
    return "\n".join(lines) + "\n\n"


async def with_inline_images(runtime: ServerRuntime, stream: AsyncIterator[str]) -> AsyncIterator[str]:
    """A job's SSE stream whose terminal ``succeeded`` event carries the images' files: the client
    that follows a job for its progress needs no GET per image afterwards."""
    try:
        async for message in stream:
            if f"event: {JobEventKind.SUCCEEDED.value}\n" in message:  # the rest pass untouched
                message = await run_in_threadpool(inline_event_images, runtime, message)
            yield message
    finally:  # the client went away: the inner stream unsubscribes now, not when collected
        close = getattr(stream, "aclose", None)
        if close is not None:
            await close()


def render_many(runtime: ServerRuntime, jobs: list[Job]) -> list[dict[str, Any]]:
    hooks = runtime.webhooks.status([j.id for j in jobs])
    store = runtime.services.store
    return [
        translate.job_out(j, base=runtime.base, webhook=hooks.get(j.id),
                          position=store.position(j.id) if j.state is JobState.QUEUED else None)
        for j in jobs
    ]


def parse_metadata_filters(filters: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in filters:
        key, sep, value = item.partition(":")
        if not sep or not key:
            raise InvalidRequest("metadata: filters look like key:value", field="metadata")
        out[key] = value
    return out


def page(runtime: ServerRuntime, *, principal: Principal, states: list[JobState] | None,
         created_after: datetime | None, created_before: datetime | None, metadata: list[str],
         limit: int, cursor: str | None) -> dict[str, Any]:
    jobs, next_seq = runtime.services.store.page(
        states=tuple(states) if states else None,
        owner=principal.owner_filter,
        created_after=translate.as_utc(created_after, "created_after"),
        created_before=translate.as_utc(created_before, "created_before"),
        metadata=parse_metadata_filters(metadata),
        before_seq=translate.decode_cursor(cursor) if cursor else None,
        limit=limit,
    )
    return {
        "jobs": render_many(runtime, jobs),
        "next_cursor": translate.encode_cursor(next_seq) if next_seq is not None else None,
    }


# -- changing ---------------------------------------------------------------------------------------


async def cancel(services: Services, job_id: str, principal: Principal) -> Job:
    """Queued: cancelled at once, never runs. Running: stops at its next step."""
    await run_in_threadpool(get, services, job_id, principal)
    return await run_in_threadpool(services.store.request_control, job_id, ControlAction.CANCEL)


async def delete(runtime: ServerRuntime, job_id: str, principal: Principal) -> None:
    """Cancels the job if needed, waits for it to stop, then deletes it and the images only it used."""
    services = runtime.services
    job = await run_in_threadpool(get, services, job_id, principal)
    if not job.state.terminal:
        with contextlib.suppress(Conflict):  # it finished meanwhile
            await run_in_threadpool(services.store.request_control, job_id, ControlAction.CANCEL)
        try:
            await services.events.wait_terminal(services.store, job_id, timeout=DELETE_WAIT_S)
        except TimeoutError:
            raise Conflict(f"job {job_id} did not stop within {DELETE_WAIT_S:.0f} s; try again") from None
    await run_in_threadpool(purge_job, services.store, services.images, job_id)
    log.info("job %s deleted", job_id)


async def retry(runtime: ServerRuntime, job_id: str, principal: Principal) -> Job:
    """A new job with the same resolved request (so the same seeds), priority, metadata and callback;
    an anonymous caller's retry keeps the job's owner."""
    services = runtime.services
    job = await run_in_threadpool(get, services, job_id, principal)
    if not job.state.terminal:
        raise Conflict(f"job {job_id} is {job.state.value}; only a finished job can be retried")
    missing = [ref.id for ref in job.request.image_refs() if not services.images.exists(ref.id)]
    if missing:
        raise Conflict(f"job {job_id}'s input image {missing[0]} is gone; submit it again")
    owner = principal if principal.id is not None else replace(principal, id=job.owner)
    new = await jobflow.submit(services, job.request, dialect=DIALECT, principal=owner,
                               priority=job.priority, metadata=job.metadata)
    hook = (await run_in_threadpool(runtime.webhooks.status, [job_id])).get(job_id)
    if hook is not None:
        await run_in_threadpool(runtime.webhooks.register, new.id, hook["url"])
    log.info("job %s retried as %s", job_id, new.id)
    return new


# -- uploads and the queue --------------------------------------------------------------------------


def upload(runtime: ServerRuntime, data: bytes, principal: Principal) -> native_images.StoredUpload:
    """Validates and stores an uploaded image once (by content hash), and starts its retention clock."""
    services = runtime.services
    stored = native_images.store_upload(services.images, data, limits=image_limits(services))
    runtime.uploads.record(stored.id, owner=principal.id, content_type=stored.content_type, size=stored.size)
    return stored


def image(runtime: ServerRuntime, image_id: str, principal: Principal,
          format: native_images.OutputFormat | None, quality: int) -> tuple[bytes, str]:
    """An image the caller may see, as stored or converted to ``format`` (sync)."""
    check_image(runtime, image_id, principal)
    images = runtime.services.images
    data = images.get(image_id)
    stored_type = images.content_type(image_id)
    if format is None or native_images.MEDIA_TYPES[format] == stored_type:
        return data, stored_type
    return native_images.convert(data, to=format, quality=quality), native_images.MEDIA_TYPES[format]


def queue_status(runtime: ServerRuntime, principal: Principal) -> dict[str, Any]:
    """Depth, running job ids and a rough ETA: what the running jobs say they need, plus the queued
    jobs at the mean duration of recent ones, spread over the live workers of every process. The
    counts and the ETA are the whole queue's; the running ids only the caller's own (all for an
    admin): another's job id is not for it to see."""
    services = runtime.services
    store = services.store
    depth = store.queue_depth()
    running = store.list(states=(JobState.RUNNING,), limit=100)
    recent = store.list(states=(JobState.SUCCEEDED,), limit=20)
    durations = [
        (j.finished_at - j.started_at).total_seconds() for j in recent if j.started_at and j.finished_at
    ]
    # Every live worker of the cluster (the registry), not only this process's threads: an API-only
    # process has none of its own.
    workers = max(len(services.workers), sum(1 for w in store.list_workers() if not w.stale))
    eta: float | None = None
    if durations or (not depth and not running):
        mean = sum(durations) / len(durations) if durations else 0.0
        left = sum(
            j.progress.eta_s if j.progress and j.progress.eta_s is not None else mean for j in running
        )
        eta = round((left + depth * mean) / max(1, workers), 3)
    mine = [j.id for j in running if principal.owns(j.owner)]
    return {"depth": depth, "running": mine, "workers": workers, "eta_s": eta}
