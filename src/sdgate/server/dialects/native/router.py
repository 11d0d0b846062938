"""``/api/v1`` routes: translate, delegate, render. Nothing else lives here."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import datetime
from typing import Annotated, Any, ClassVar, Literal

from fastapi import APIRouter, Header, Query, Request, Response, WebSocket
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, BeforeValidator, StringConstraints
from starlette.concurrency import run_in_threadpool

from sdgate.core.errors import InvalidRequest
from sdgate.core.jobs import JobState
from sdgate.core.loras import list_loras
from sdgate.core.samplers import samplers_listing, schedulers_listing
from sdgate.core.styles import STYLES_FILE, load_styles
from sdgate.server.auth import current_principal
from sdgate.server.bodies import ErrorBody
from sdgate.server.deps import CurrentPrincipal, ServicesDep
from sdgate.server.dialects.native import events as native_events
from sdgate.server.dialects.native import images as native_images
from sdgate.server.dialects.native import jobs as native_jobs
from sdgate.server.dialects.native import translate
from sdgate.server.dialects.native.protocol import (
    JobCreate,
    JobOut,
    JobPage,
    LoraOut,
    ModelOut,
    QueueOut,
    SamplerOut,
    SchedulerOut,
    StyleOut,
    UploadOut,
    VaeOut,
)
from sdgate.server.errors import DialectRoute
from sdgate.server.runtime import RuntimeDep, get_runtime


class NativeRoute(DialectRoute):
    """Every native error is an ``ErrorBody``, documented for each status."""

    error_body: ClassVar[type[BaseModel] | None] = ErrorBody

    def __init__(self, path: str, endpoint: Callable[..., Any], **kwargs: Any) -> None:
        unauthorised = {"description": "no, malformed, unknown, revoked or expired credentials"}
        forbidden = {"description": "the API key lacks the scope this route needs"}
        busy = {"description": "the queue is full: try again after Retry-After seconds"}
        own = kwargs.get("responses") or {}
        kwargs["responses"] = {401: unauthorised, 403: forbidden, 429: busy, **own}
        super().__init__(path, endpoint, **kwargs)


def _iso_datetime(value: Any) -> Any:
    """A query's date-time as ISO 8601 text only: pydantic would read ``0.5`` as a Unix time."""
    if isinstance(value, str) and not _ISO_DATE.match(value):
        raise ValueError("an ISO 8601 date-time, like 2026-01-31T12:00:00Z")
    return value


_ISO_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}")
IsoDateTime = Annotated[datetime, BeforeValidator(_iso_datetime)]


router = APIRouter(prefix="/api/v1", route_class=NativeRoute, tags=["native"])

IdempotencyKey = Annotated[
    str | None,
    Header(alias="Idempotency-Key", pattern=r"^[\x20-\x7e]{1,255}$",
           description="printable ASCII; same key + same body: the same job"),
]
Wait = Annotated[
    float,
    Query(ge=0, le=native_jobs.MAX_WAIT_S,
          description="long poll: answer once the job has ended, or after this many seconds"),
]
Include = Annotated[
    list[Literal["images"]],
    Query(max_length=4,
          description="images: put each image file in the result, base64, as data (no extra GET)"),
]
# Statuses beyond the common ones (``COMMON_ERROR_STATUSES``); NativeRoute documents each as ErrorBody.
_NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"description": "no such job, image or name"}}
_CONFLICT: dict[int | str, dict[str, Any]] = {409: {"description": "the job's state does not allow it"}}
# ``key:value``; the key is a metadata key (no ``:``, quote or backslash).
MetadataFilter = Annotated[str, StringConstraints(pattern=r'^[^:"\\]{1,256}:.{0,1024}$')]


@router.post("/jobs", status_code=202, response_model=JobOut, responses={**_NOT_FOUND, **_CONFLICT})
async def submit_job(
    body: JobCreate, runtime: RuntimeDep, principal: CurrentPrincipal, response: Response,
    idempotency_key: IdempotencyKey = None, wait: Wait = 0, include: Include = [],  # noqa: B006
) -> dict[str, Any]:
    """Queue a txt2img, img2img or inpaint job (202). Images: base64, ``data:`` URIs or upload ids.
    With ``Idempotency-Key``, the same key and body return the same job (``Idempotent-Replayed:
    true``); the same key with another body is a 409. Keys are per caller and kept 24 h.
    With ``?wait=N`` the answer comes once the job has ended (or after N s, still 202 either way);
    with ``?include=images`` a finished job's images come inline: one round trip per generation."""
    job, created = await native_jobs.submit(runtime, body, principal=principal,
                                            idempotency_key=idempotency_key)
    if not created:
        response.headers["Idempotent-Replayed"] = "true"
    response.headers["Location"] = translate.link(runtime.base, f"{translate.API}/jobs/{job.id}")
    job = await native_jobs.wait_until_done(runtime.services, job, wait)
    return await run_in_threadpool(native_jobs.render, runtime, job, include_images="images" in include)


@router.get("/jobs", response_model=JobPage)
async def list_jobs(
    runtime: RuntimeDep,
    principal: CurrentPrincipal,
    state: Annotated[
        list[JobState] | None, Query(max_length=len(JobState), description="repeat for several")
    ] = None,
    created_after: Annotated[IsoDateTime | None, Query(description="ISO 8601; naive: UTC")] = None,
    created_before: Annotated[IsoDateTime | None, Query(description="ISO 8601; naive: UTC")] = None,
    metadata: Annotated[
        list[MetadataFilter], Query(max_length=16, description="key:value, repeat for several")
    ] = [],  # noqa: B006
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Query(
        pattern=r"^[A-Za-z0-9_-]{1,64}$", description="a next_cursor"
    )] = None,
) -> dict[str, Any]:
    """The caller's jobs, newest first; pass ``next_cursor`` back as ``cursor`` for the next page."""
    return await run_in_threadpool(
        lambda: native_jobs.page(runtime, principal=principal, states=state, created_after=created_after,
                                 created_before=created_before, metadata=metadata, limit=limit, cursor=cursor)
    )


@router.get("/jobs/{job_id}", response_model=JobOut, responses=_NOT_FOUND)
async def get_job(
    job_id: str, runtime: RuntimeDep, principal: CurrentPrincipal, wait: Wait = 0, include: Include = [],  # noqa: B006
) -> dict[str, Any]:
    """A job: state, queue position, progress, result (images with URLs) or error, webhook state.
    ``?wait=N``: a long poll, answered once the job has ended or after N s; ``?include=images``:
    the images' files inline (base64 ``data``)."""
    job = await run_in_threadpool(native_jobs.get, runtime.services, job_id, principal)
    job = await native_jobs.wait_until_done(runtime.services, job, wait)
    return await run_in_threadpool(native_jobs.render, runtime, job, include_images="images" in include)


@router.post("/jobs/{job_id}/cancel", response_model=JobOut, responses={**_NOT_FOUND, **_CONFLICT})
async def cancel_job(job_id: str, runtime: RuntimeDep, principal: CurrentPrincipal) -> dict[str, Any]:
    """A queued job is cancelled at once and never runs; a running one stops at its next step.
    409 if the job already ended."""
    job = await native_jobs.cancel(runtime.services, job_id, principal)
    return await run_in_threadpool(native_jobs.render, runtime, job)


@router.delete("/jobs/{job_id}", status_code=204, responses={**_NOT_FOUND, **_CONFLICT})
async def delete_job(job_id: str, runtime: RuntimeDep, principal: CurrentPrincipal) -> Response:
    """Cancels the job if it has not ended, then deletes it, its events and the images only it used."""
    await native_jobs.delete(runtime, job_id, principal)
    return Response(status_code=204)


@router.post("/jobs/{job_id}/retry", status_code=202, response_model=JobOut,
             responses={**_NOT_FOUND, **_CONFLICT})
async def retry_job(job_id: str, runtime: RuntimeDep, principal: CurrentPrincipal) -> dict[str, Any]:
    """A new job (202) with the ended job's resolved request (same seeds), priority, metadata and
    callback. 409 while the job is still queued or running."""
    job = await native_jobs.retry(runtime, job_id, principal)
    return await run_in_threadpool(native_jobs.render, runtime, job)


@router.get(
    "/jobs/{job_id}/events",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}, "description": "Server-Sent Events"},
               **_NOT_FOUND},
)
async def job_events(
    job_id: str,
    runtime: RuntimeDep,
    principal: CurrentPrincipal,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID", max_length=32)] = None,
    include: Include = [],  # noqa: B006
    previews: Annotated[
        int | None,
        Query(ge=1, le=1000, description="a small live preview on progress events every N steps "
              "(default: the server's preview_every_n_steps, 0: none)"),
    ] = None,
) -> StreamingResponse:
    """Server-Sent Events: ``queued``, ``started``, ``progress``, ``succeeded``, ``failed``,
    ``cancelled``. Starts with the job's current state (or, with ``Last-Event-ID``, every event after
    that id) and ends after the terminal event. State events carry the whole job; progress events
    ``{job_id, step, total, eta_s, ...}``, with a small ``preview`` every N steps when enabled.
    With ``?include=images`` the ``succeeded`` event's job has each image's file inline (base64
    ``data``, as on ``GET /api/v1/jobs/{id}?include=images``): following a job for its progress
    then costs no GET per image. Servers before this option ignore it (``data`` stays null).

    For every job of the caller at once, open the WebSocket ``/api/v1/events``: JSON messages
    ``{"id", "event", "data"}`` with the same events."""
    after = native_events.parse_last_event_id(last_event_id)
    job = await run_in_threadpool(native_jobs.get, runtime.services, job_id, principal)
    stream = native_events.job_stream(runtime, job, after, previews=previews)
    if "images" in include:
        stream = native_jobs.with_inline_images(runtime, stream)
    return StreamingResponse(
        stream,
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


@router.websocket("/events")
async def events_socket(websocket: WebSocket) -> None:
    runtime = get_runtime(websocket.app.state.services)
    await native_events.fan_out(runtime, websocket, current_principal(websocket.scope))


_UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "description": "the image file: raw bytes, or a multipart form field named file",
        "content": {
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
            "multipart/form-data": {
                "schema": {"type": "object", "properties": {"file": {"type": "string", "format": "binary"}}}
            },
        },
    }
}


@router.post("/uploads", status_code=201, response_model=UploadOut,
             openapi_extra=_UPLOAD_BODY)
async def upload_image(request: Request, runtime: RuntimeDep, principal: CurrentPrincipal) -> dict[str, Any]:
    """Store an image once (by content hash) for use as ``init_image`` or ``mask`` by its id."""
    data = await _upload_bytes(request)
    stored = await run_in_threadpool(native_jobs.upload, runtime, data, principal)
    return {"id": stored.id, "url": translate.image_url(runtime.base, stored.id),
            "content_type": stored.content_type, "width": stored.width, "height": stored.height,
            "size": stored.size}


@router.get(
    "/images/{image_id}",
    response_class=Response,
    responses={200: {"content": {t: {} for t in native_images.MEDIA_TYPES.values()},
                     "description": "the image file"}, **_NOT_FOUND},
)
async def get_image(
    image_id: str,
    runtime: RuntimeDep,
    principal: CurrentPrincipal,
    format: native_images.OutputFormat | None = None,
    quality: Annotated[int, Query(ge=1, le=100)] = 90,
) -> Response:
    """An image as stored (generated ones are PNG with the infotext), or converted to ``format``
    (the infotext kept in EXIF): one the caller uploaded or one of its jobs made or read (another
    caller's is a 404). Ids are content hashes: responses are cacheable forever (by the caller's
    own cache only, when the server has credentials)."""
    data, media_type = await run_in_threadpool(
        native_jobs.image, runtime, image_id, principal, format, quality
    )
    tag = f'"{image_id}-{format or "orig"}-{quality if format else ""}"'
    shared = "public" if principal.anonymous else "private"
    return Response(data, media_type=media_type,
                    headers={"Cache-Control": f"{shared}, max-age=31536000, immutable", "ETag": tag})


@router.get("/models", response_model=list[ModelOut])
async def models(services: ServicesDep) -> list[dict[str, Any]]:
    def listing() -> list[dict[str, Any]]:
        default = services.catalog.default.name if services.catalog.list() else None
        out = []
        for info in services.catalog.list():
            d = services.model_defaults(info)
            out.append({"name": info.name, "title": info.title, "family": info.family, "format": info.format,
                        "default": info.name == default, "width": d.width, "height": d.height,
                        "steps": d.steps, "vae_scale_factor": d.vae_scale_factor})
        return out

    return await run_in_threadpool(listing)


@router.get("/loras", response_model=list[LoraOut])
async def loras(services: ServicesDep) -> list[dict[str, Any]]:
    """The LoRAs a job may name (``loras`` or ``<lora:name:weight>`` in the prompt)."""
    found = await run_in_threadpool(list_loras, services.catalog)
    return [{"name": f.name, "alias": f.alias} for f in found]


@router.get("/vaes", response_model=list[VaeOut])
async def vaes(services: ServicesDep) -> list[dict[str, Any]]:
    """The VAE files a job may name as ``vae``."""
    return [{"name": v.name} for v in await run_in_threadpool(services.catalog.vaes)]


@router.get("/styles", response_model=list[StyleOut])
async def styles(services: ServicesDep) -> list[dict[str, Any]]:
    """The saved styles (A1111's ``styles.csv`` in the data dir) a job may name in ``styles``."""
    found = await run_in_threadpool(load_styles, services.settings.data_dir / STYLES_FILE)
    return [{"name": n, "prompt": s.prompt, "negative_prompt": s.negative_prompt} for n, s in found.items()]


@router.get("/samplers", response_model=list[SamplerOut])
async def samplers() -> list[dict[str, Any]]:
    return [{"name": s["name"], "aliases": s["aliases"]} for s in samplers_listing()]


@router.get("/schedulers", response_model=list[SchedulerOut])
async def schedulers() -> list[dict[str, Any]]:
    return [{"name": s["name"], "label": s["label"]} for s in schedulers_listing()]


@router.get("/queue", response_model=QueueOut)
async def queue(runtime: RuntimeDep, principal: CurrentPrincipal) -> dict[str, Any]:
    """Jobs waiting, jobs running (the caller's own ids), workers, and a rough ETA for the queue to
    drain."""
    return await run_in_threadpool(native_jobs.queue_status, runtime, principal)


async def _upload_bytes(request: Request) -> bytes:
    """A multipart form's ``file`` (or first file) field, else the raw body."""
    if request.headers.get("content-type", "").startswith("multipart/form-data"):
        async with request.form() as form:
            for value in [form.get("file"), *form.values()]:
                if value is not None and not isinstance(value, str):
                    return await value.read()
        raise InvalidRequest("file: send the image as a multipart field named file", field="file")
    return await request.body()

