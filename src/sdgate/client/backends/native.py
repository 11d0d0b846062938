"""sdgate's own job API (``/api/v1``).

``generate`` without progress listeners is one request: ``POST /jobs?wait=..&include=images``
answers with the finished job and its images inline. With listeners, or when the job outlasts the
long poll (or the server predates it), the job is followed over SSE (polling as a fallback): two
requests, as ``GET /jobs/{id}/events?include=images`` ends with the finished job and its images
inline. A server that predates either option ignores it, and each image is then fetched by URL.
Init images and masks are uploaded once (``POST /uploads``) and sent by id.
"""

from __future__ import annotations

import base64
import hashlib
import logging
from dataclasses import asdict
from typing import Any, ClassVar
from urllib.parse import quote

from sdgate.client._constants import LONG_POLL_S, MAX_REMEMBERED_UPLOADS
from sdgate.client._exceptions import (
    APIConnectionError,
    APIError,
    APIResponseError,
    APIStatusError,
    JobFailedError,
    NotFoundError,
)
from sdgate.client._ops import Call, Close, Emit, NextEvent, Sleep, Subscribe
from sdgate.client._sse import ServerSentEvent
from sdgate.client._types import TERMINAL_STATES, Hires, ImageRequest, Job, JobList, Model, ProgressEvent
from sdgate.client.backends._base import Backend, Context, Gen, b64encode, poll_delays, result_from_images

log = logging.getLogger("sdgate.client")
API = "/api/v1"
MAX_RESUBSCRIBE = 3
DRAIN_EVENTS = 4


# Request fields sent under the same name when set (``None``: the server's default).
_PLAIN_FIELDS = (
    "width",
    "height",
    "steps",
    "cfg_scale",
    "sampler",
    "scheduler",
    "seed",
    "model",
    "denoising_strength",
    "subseed",
    "subseed_strength",
    "seed_resize_from_w",
    "seed_resize_from_h",
    "clip_skip",
    "eta",
    "s_churn",
    "s_tmin",
    "s_tmax",
    "s_noise",
    "eta_noise_seed_delta",
    "resize_mode",
    "image_cfg_scale",
    "inpainting_fill",
    "inpaint_full_res",
    "inpaint_full_res_padding",
    "inpainting_mask_invert",
    "initial_noise_multiplier",
    "vae",
    "metadata",
    "callback_url",
)


def hires_body(hires: Hires) -> dict[str, Any]:
    out = asdict(hires)
    return {k: v for k, v in out.items() if v is not None}


def request_body(request: ImageRequest, images: dict[str, str] | None = None) -> dict[str, Any]:
    """The wire body of ``POST /api/v1/jobs``: flat fields; unset ones left out (server defaults).
    ``images`` maps ``init_image``/``mask`` to what to send instead of base64 (an upload id)."""
    body: dict[str, Any] = {
        "prompt": request.prompt,
        "negative_prompt": request.negative_prompt,
        "batch_size": request.batch_size,
        "priority": request.priority,
    }
    for name in _PLAIN_FIELDS:
        value = getattr(request, name)
        if value is not None:
            body[name] = value
    if request.n_iter != 1:
        body["n_iter"] = request.n_iter
    if request.tiling:
        body["tiling"] = True
    if request.mask_blur is not None:
        body["mask_blur_x"] = body["mask_blur_y"] = request.mask_blur
    if request.hires is not None:
        body["hires"] = hires_body(request.hires)
    if request.loras:
        body["loras"] = [
            {
                "name": lora.name,
                "te_weight": lora.weight,
                "unet_weight": lora.weight if lora.unet_weight is None else lora.unet_weight,
            }
            for lora in request.loras
        ]
    if request.styles:
        body["styles"] = list(request.styles)
    images = images or {}
    for name in ("init_image", "mask"):
        data = getattr(request, name)
        if data is not None:
            body[name] = images.get(name) or b64encode(data)
    return body


def event_from_ws(message: dict[str, Any]) -> ProgressEvent:
    """One message of ``/api/v1/events`` (``{"id", "event", "data"}``) as a ``ProgressEvent``."""
    data = message.get("data")
    if not isinstance(data, dict):
        data = {}
    return ProgressEvent(
        kind=str(message.get("event") or ""),
        job_id=str(data.get("job_id") or data.get("id") or "") or None,
        step=int(data.get("step") or (data.get("progress") or {}).get("step") or 0),
        total=int(data.get("total") or (data.get("progress") or {}).get("total") or 0),
        eta_s=data.get("eta_s"),
        data=data,
    )


def event_from_sse(sse: ServerSentEvent, job_id: str) -> ProgressEvent:
    try:
        data = sse.json() or {}
    except ValueError:
        data = {}
    if not isinstance(data, dict):
        data = {}
    return ProgressEvent(
        kind=sse.event,
        job_id=str(data.get("job_id", job_id)),
        step=int(data.get("step") or 0),
        total=int(data.get("total") or 0),
        eta_s=data.get("eta_s"),
        data=data,
    )


def job_from_event(event: ProgressEvent) -> Job | None:
    """The job a terminal event carries (issue 6: state events hold the whole job), if it does."""
    data = event.data
    if data.get("id") and data.get("state") in TERMINAL_STATES:
        return Job.from_json(data)
    return None


def event_from_job(job: Job) -> ProgressEvent:
    prog = job.progress
    kind = job.state
    if job.state == "running":  # the event names of issue 6: a running job has started or progressed
        kind = "progress" if prog and prog.step else "started"
    return ProgressEvent(
        kind=kind,
        job_id=job.id,
        step=prog.step if prog else 0,
        total=prog.total if prog else 0,
        eta_s=prog.eta_s if prog else None,
        data=job.raw,
    )


class NativeBackend(Backend):
    kind: ClassVar[str] = "sdgate"
    modes: ClassVar[frozenset[str]] = frozenset({"txt2img", "img2img", "inpaint"})
    unsupported: ClassVar[dict[str, str]] = {}
    strip_suffixes: ClassVar[tuple[str, ...]] = (API,)
    supports_jobs: ClassVar[bool] = True

    def _job_url(self, job_id: str, tail: str = "") -> str:
        return self.url(f"{API}/jobs/{quote(job_id, safe='')}{tail}")

    # -- jobs -----------------------------------------------------------------------------------

    def __init__(self, base_url: str, **options: Any) -> None:
        super().__init__(base_url, **options)
        self._uploads: dict[str, str] = {}  # sha256 of an image -> its upload id on this server
        self._can_upload = True

    def submit(self, request: ImageRequest, *, wait: float = 0, include_images: bool = False) -> Gen:
        """``POST /api/v1/jobs``. ``wait``: a long poll (the answer comes when the job ends, or after
        ``wait`` s); ``include_images``: a finished job's images come inline."""
        params: dict[str, Any] = {}
        if wait > 0:
            params["wait"] = round(wait, 3)
        if include_images:
            params["include"] = "images"
        for attempt in range(2):
            refs = yield from self._image_refs(request)
            body = request_body(request, refs)
            if body.get("model") is None and self.model:
                body["model"] = self.model
            try:
                resp = yield Call(
                    "POST",
                    self.url(f"{API}/jobs"),
                    json=body,
                    params=params or None,
                    headers=self.idempotency(),  # one key per body: every retry of this Call reuses it
                    long=wait > 0,
                )
            except NotFoundError as exc:
                # Uploads expire on the server: a remembered id may be gone. Upload again, once.
                if attempt or not self._forget_expired(exc, refs):
                    raise
                continue
            return Job.from_json(_json(resp, "submit"))
        raise AssertionError("unreachable")  # pragma: no cover

    def upload(self, data: bytes) -> Gen:
        """The upload id of an image (``POST /api/v1/uploads``), uploading it once per client."""
        digest = hashlib.sha256(data).hexdigest()
        known = self._uploads.get(digest)
        if known is not None:
            return known
        resp = yield Call(
            "POST",
            self.url(f"{API}/uploads"),
            content=data,
            headers={"Content-Type": "application/octet-stream"},
        )
        upload_id = str(_json(resp, "upload")["id"])
        if len(self._uploads) >= MAX_REMEMBERED_UPLOADS:
            self._uploads.pop(next(iter(self._uploads)))
        self._uploads[digest] = upload_id
        return upload_id

    def _image_refs(self, request: ImageRequest) -> Gen:
        """``init_image``/``mask`` -> upload id; empty where the server takes no uploads (base64)."""
        refs: dict[str, str] = {}
        for name in ("init_image", "mask"):
            data = getattr(request, name)
            if data is None or not self._can_upload:
                continue
            try:
                refs[name] = yield from self.upload(data)
            except APIStatusError as exc:
                if exc.status not in (404, 405):
                    raise
                log.info("%s has no /api/v1/uploads (%s): sending images inline", self.base_url, exc.status)
                self._can_upload = False
        return refs

    def _forget_expired(self, exc: APIStatusError, refs: dict[str, str]) -> bool:
        """Forget the upload a 404 names; True if there was one (so a new upload may help)."""
        error = exc.body.get("error") if isinstance(exc.body, dict) else None
        name = error.get("field") if isinstance(error, dict) else None
        if name not in refs:
            return False
        stale = {digest for digest, upload_id in self._uploads.items() if upload_id in refs.values()}
        for digest in stale:
            del self._uploads[digest]
        return True

    def get_job(self, job_id: str, *, include_images: bool = False) -> Gen:
        params = _include(include_images)
        resp = yield Call("GET", self._job_url(job_id), params=params)
        return Job.from_json(_json(resp, "job"))

    def cluster_status(self) -> Gen:
        """``GET /api/v1/cluster``: workers (device, loaded models, free memory, current job,
        stale) and the queue by state, as the server sends them."""
        resp = yield Call("GET", self.url(f"{API}/cluster"))
        data = _json(resp, "cluster")
        if not isinstance(data, dict):
            raise APIResponseError("cluster: expected an object")
        return data

    def list_jobs(self, **filters: Any) -> Gen:
        params = {k: v for k, v in filters.items() if v is not None}
        resp = yield Call("GET", self.url(f"{API}/jobs"), params=params)
        data = _json(resp, "jobs")
        rows = data.get("data", data.get("jobs", data.get("items"))) if isinstance(data, dict) else data
        if not isinstance(rows, list):
            raise APIResponseError("jobs: expected a list of jobs")
        cursor = data.get("next_cursor") if isinstance(data, dict) else None
        return JobList((Job.from_json(row) for row in rows), next_cursor=cursor)

    def cancel_job(self, job_id: str) -> Gen:
        resp = yield Call("POST", self._job_url(job_id, "/cancel"))
        return Job.from_json(_json(resp, "cancel"))

    def delete_job(self, job_id: str) -> Gen:
        yield Call("DELETE", self._job_url(job_id), long=True)  # waits for a running job to stop
        return None

    def retry_job(self, job_id: str) -> Gen:
        # Not retried on a dropped connection: the first try may have made a job already.
        resp = yield Call("POST", self._job_url(job_id, "/retry"), retry=False)
        return Job.from_json(_json(resp, "retry"))

    def job_events(self) -> Gen:
        """Every event of the caller's jobs over ``/api/v1/events``, as ``Emit``s, until closed.
        A dropped or idle connection is opened again (events in the gap are not replayed)."""
        failures = 0
        while True:
            handle = yield Subscribe(Call("GET", self.url(f"{API}/events")), "ws")
            try:
                while True:
                    message = yield NextEvent(handle)
                    if message is None:
                        break
                    failures = 0
                    if isinstance(message, dict) and message.get("event") not in (None, "hello"):
                        yield Emit(event_from_ws(message))
            except APIConnectionError:
                pass
            yield Close(handle)
            failures += 1
            if failures > MAX_RESUBSCRIBE:
                raise APIConnectionError(f"{self.url(API + '/events')}: the event stream keeps closing")

    def wait_job(self, job_id: str, ctx: Context, *, include_images: bool = False) -> Gen:
        """Follow a job to a terminal state over SSE; poll if the stream is unavailable.
        ``include_images``: the finished job comes with its images' files inline where the server
        can (``?include=images``), so ``job_result`` needs no further request."""
        job = yield from self._follow_sse(job_id, ctx, include_images)
        if job is None:
            job = yield from self._poll(job_id, ctx, include_images)
        return job

    def _follow_sse(self, job_id: str, ctx: Context, include_images: bool) -> Gen:
        last_id: str | None = None
        for _ in range(MAX_RESUBSCRIBE):
            headers = {"Accept": "text/event-stream"}
            if last_id is not None:
                headers["Last-Event-ID"] = last_id
            try:
                handle = yield Subscribe(
                    Call(
                        "GET",
                        self._job_url(job_id, "/events"),
                        params=_include(include_images),
                        headers=headers,
                        long=True,
                        retry=True,
                    )
                )
            except APIStatusError as exc:
                if exc.status in (404, 405, 406, 501):  # no SSE here: poll instead
                    return None
                raise
            terminal = False
            final: Job | None = None
            try:
                while not terminal:
                    sse = yield NextEvent(handle)
                    if sse is None:
                        break
                    last_id = sse.id or last_id
                    terminal = sse.event in TERMINAL_STATES
                    if not (ctx.progress or terminal):
                        continue  # nobody listens: leave the event unparsed
                    event = event_from_sse(sse, job_id)
                    if ctx.progress and sse.event:
                        yield Emit(event)
                    if terminal:
                        final = job_from_event(event)
                # The server ends the stream after the terminal event: reading to its end lets the
                # connection go back to the pool instead of being dropped.
                for _ in range(DRAIN_EVENTS):
                    if terminal and (yield NextEvent(handle)) is None:
                        break
            except APIError:
                pass  # the stream broke: resume from the last event id
            yield Close(handle)
            if final is not None:  # a state event carries the whole job: no need to ask again
                return final
            job = yield from self.get_job(job_id, include_images=include_images)
            if job.done:
                return job
        return None

    def _poll(self, job_id: str, ctx: Context, include_images: bool) -> Gen:
        last: tuple[str, int] | None = None
        for delay in poll_delays(ctx.poll_initial, ctx.poll_max):
            job = yield from self.get_job(job_id, include_images=include_images)
            key = (job.state, job.progress.step if job.progress else 0)
            if ctx.progress and key != last:
                yield Emit(event_from_job(job))
            last = key
            if job.done:
                return job
            yield Sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover

    def job_result(self, job: Job) -> Gen:
        if job.state != "succeeded":
            error = job.error or {}
            raise JobFailedError(
                f"job {job.id} {job.state}: {error.get('message', 'no message')}",
                code=str(error.get("code", job.state)),
                job_id=job.id,
            )
        result = job.result or {}
        rows = result.get("images") or []
        blobs: list[bytes] = []
        for row in rows:
            if row.get("data"):  # inline (?include=images): no request
                blobs.append(base64.b64decode(row["data"]))
                continue
            url = row.get("url") or f"{API}/images/{quote(str(row['id']), safe='')}"
            resp = yield Call("GET", self.url(url))
            blobs.append(resp.content)
        timings = {
            k: float(v) for k, v in (result.get("timings") or {}).items() if isinstance(v, int | float)
        }
        return result_from_images(
            blobs,
            [row.get("seed") for row in rows],
            backend=self.kind,
            where=f"job {job.id}",
            job_id=job.id,
            timings=timings,
            infotexts=[str(row.get("infotext") or "") for row in rows],
            filtered=[row.get("filtered") is True for row in rows],
        )

    # -- the one-call path ----------------------------------------------------------------------

    def generate(self, request: ImageRequest, ctx: Context) -> Gen:
        """Without listeners, one request: submit, wait (long poll) and the images inline. With
        listeners (or a long job, or a server without the long poll): follow the job's SSE stream,
        whose last event brings the images (a server without that: one GET per image)."""
        if ctx.progress:
            job = yield from self.submit(request)
            yield Emit(event_from_job(job))
        else:
            # half the deadline at most: the answer must arrive before the read timeout fires
            wait = min(LONG_POLL_S, ctx.timeout / 2)
            job = yield from self.submit(request, wait=wait, include_images=True)
        if not job.done:
            job = yield from self.wait_job(job.id, ctx, include_images=True)
        return (yield from self.job_result(job))

    def list_models(self) -> Gen:
        resp = yield Call("GET", self.url(f"{API}/models"))
        data = _json(resp, "models")
        rows = data.get("data", data.get("models")) if isinstance(data, dict) else data
        return [
            Model(
                name=str(r.get("name") or r.get("id")),
                title=str(r.get("title") or r.get("name") or ""),
                raw=r,
            )
            for r in rows or []
        ]


def _include(images: bool) -> dict[str, str] | None:
    """The query that asks for a finished job's images inline (older servers ignore it)."""
    return {"include": "images"} if images else None


def _json(resp: Any, where: str) -> Any:
    try:
        return resp.json()
    except ValueError:
        raise APIResponseError(f"{where}: the answer is not JSON") from None
