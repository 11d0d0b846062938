"""sdgate's own job API (``/api/v1``): submit, follow over SSE (polling as a fallback), fetch."""

from __future__ import annotations

from typing import Any, ClassVar
from urllib.parse import quote

from sdgate.client._exceptions import APIError, APIResponseError, APIStatusError, JobFailedError
from sdgate.client._ops import Call, Close, Emit, NextEvent, Sleep, Subscribe
from sdgate.client._sse import ServerSentEvent
from sdgate.client._types import TERMINAL_STATES, ImageRequest, Job, JobList, Model, ProgressEvent
from sdgate.client.backends._base import Backend, Context, Gen, b64encode, poll_delays, result_from_images

API = "/api/v1"
MAX_RESUBSCRIBE = 3
DRAIN_EVENTS = 4


def request_body(request: ImageRequest) -> dict[str, Any]:
    """The wire body of ``POST /api/v1/jobs``: flat fields; ``None`` left out (server defaults)."""
    body: dict[str, Any] = {
        "prompt": request.prompt,
        "negative_prompt": request.negative_prompt,
        "batch_size": request.batch_size,
        "priority": request.priority,
    }
    for name in (
        "width",
        "height",
        "steps",
        "cfg_scale",
        "sampler",
        "scheduler",
        "seed",
        "model",
        "denoising_strength",
        "metadata",
        "callback_url",
    ):
        value = getattr(request, name)
        if value is not None:
            body[name] = value
    if request.init_image is not None:
        body["init_image"] = b64encode(request.init_image)
    if request.mask is not None:
        body["mask"] = b64encode(request.mask)
    return body


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

    def submit(self, request: ImageRequest) -> Gen:
        body = request_body(request)
        if body.get("model") is None and self.model:
            body["model"] = self.model
        resp = yield Call("POST", self.url(f"{API}/jobs"), json=body, headers=self.idempotency())
        return Job.from_json(_json(resp, "submit"))

    def get_job(self, job_id: str) -> Gen:
        resp = yield Call("GET", self._job_url(job_id))
        return Job.from_json(_json(resp, "job"))

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

    def wait_job(self, job_id: str, ctx: Context) -> Gen:
        """Follow a job to a terminal state over SSE; poll if the stream is unavailable."""
        job = yield from self._follow_sse(job_id, ctx)
        if job is None:
            job = yield from self._poll(job_id, ctx)
        return job

    def _follow_sse(self, job_id: str, ctx: Context) -> Gen:
        last_id: str | None = None
        for _ in range(MAX_RESUBSCRIBE):
            headers = {"Accept": "text/event-stream"}
            if last_id is not None:
                headers["Last-Event-ID"] = last_id
            try:
                handle = yield Subscribe(
                    Call("GET", self._job_url(job_id, "/events"), headers=headers, long=True, retry=True)
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
            job = yield from self.get_job(job_id)
            if job.done:
                return job
        return None

    def _poll(self, job_id: str, ctx: Context) -> Gen:
        last: tuple[str, int] | None = None
        for delay in poll_delays(ctx.poll_initial, ctx.poll_max):
            job = yield from self.get_job(job_id)
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
        )

    # -- the one-call path ----------------------------------------------------------------------

    def generate(self, request: ImageRequest, ctx: Context) -> Gen:
        job = yield from self.submit(request)
        if ctx.progress:
            yield Emit(event_from_job(job))
        if not job.done:
            job = yield from self.wait_job(job.id, ctx)
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


def _json(resp: Any, where: str) -> Any:
    try:
        return resp.json()
    except ValueError:
        raise APIResponseError(f"{where}: the answer is not JSON") from None
