"""Fakes for the SDK tests: a native job API that follows issue 6's wire format (on MockTransport),
a PNG maker, a recorder of sleeps, and a fake clock."""

from __future__ import annotations

import base64
import hashlib
import io
import itertools
import json
from dataclasses import dataclass, field
from typing import Any

import httpx
from PIL import Image
from PIL.PngImagePlugin import PngInfo


def png_bytes(
    colour: tuple[int, int, int] = (255, 0, 0), size: tuple[int, int] = (8, 8), infotext: str | None = None
) -> bytes:
    out = io.BytesIO()
    info = None
    if infotext is not None:
        info = PngInfo()
        info.add_text("parameters", infotext)
    Image.new("RGB", size, colour).save(out, format="PNG", pnginfo=info)
    return out.getvalue()


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Sleeps(list[float]):
    """A sleep that records instead of sleeping."""

    def __call__(self, seconds: float) -> None:
        self.append(seconds)


class AsyncSleeps(list[float]):
    async def __call__(self, seconds: float) -> None:
        self.append(seconds)


@dataclass
class FakeJob:
    id: str
    body: dict[str, Any]
    polls_left: int
    state: str = "queued"
    events: list[tuple[int, str, dict[str, Any]]] = field(default_factory=list)


class FakeNative:
    """``/api/v1`` as issue 6 fixes it. Each GET of a job moves it one step on (queued -> running
    -> succeeded after ``steps`` polls); the SSE stream replays every event to the terminal one.

    Prompts: "fail" fails the job; "cut" drops the SSE stream after the first event once.
    ``long_poll``: ``?wait=`` runs the job to its end and ``?include=images`` inlines the images
    (off: the server predates them and ignores both); ``uploads``: ``POST /api/v1/uploads`` exists.
    ``sse_jobs``: the terminal SSE event carries the whole job, as the real server's does (off:
    only ``job_id``); ``sse_images``: under ``?include=images`` that job has its images inline.
    """

    def __init__(
        self,
        *,
        steps: int = 2,
        sse: bool = True,
        long_poll: bool = False,
        uploads: bool = False,
        sse_jobs: bool = False,
        sse_images: bool = False,
    ) -> None:
        self.steps = steps
        self.sse = sse
        self.sse_jobs = sse_jobs
        self.sse_images = sse_images
        self.long_poll = long_poll
        self.uploads_enabled = uploads
        self.uploads: dict[str, bytes] = {}
        self.jobs: dict[str, FakeJob] = {}
        self.keys: dict[str, tuple[str, str]] = {}
        self.requests: list[httpx.Request] = []
        self.ids = itertools.count(1)
        self.event_ids = itertools.count(1)
        self.cut_done: set[str] = set()

    @property
    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)

    def _event(self, job: FakeJob, name: str, **data: Any) -> None:
        job.events.append((next(self.event_ids), name, {"job_id": job.id, **data}))

    def _advance(self, job: FakeJob) -> None:
        if job.state in ("succeeded", "failed", "cancelled"):
            return
        if job.state == "queued":
            job.state = "running"
            self._event(job, "started")
            return
        job.polls_left -= 1
        step = self.steps - job.polls_left
        self._event(job, "progress", step=step, total=self.steps, eta_s=0.1)
        if job.polls_left <= 0:
            job.state = "failed" if "fail" in job.body["prompt"] else "succeeded"
            self._event(job, job.state)

    def view(self, job: FakeJob, *, inline: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": job.id,
            "state": job.state,
            "position": 0 if job.state == "queued" else None,
            "created_at": "2026-01-01T00:00:00Z",
            "request": job.body,
            "progress": None,
            "result": None,
            "error": None,
            "links": {"self": f"/api/v1/jobs/{job.id}", "events": f"/api/v1/jobs/{job.id}/events"},
        }
        if job.state == "running":
            out["progress"] = {"step": self.steps - job.polls_left, "total": self.steps, "eta_s": 0.1}
        if job.state == "succeeded":
            seed = int(job.body.get("seed", 7))
            out["result"] = {
                "images": [
                    {
                        "id": f"img_{job.id}_{i}",
                        "url": f"/api/v1/images/img_{job.id}_{i}",
                        "seed": seed + i,
                        "width": 8,
                        "height": 8,
                    }
                    for i in range(int(job.body.get("batch_size", 1)))
                ],
                "timings": {"total_s": 0.5},
            }
        if job.state == "failed":
            out["error"] = {"code": "generation_failed", "message": "the engine exploded"}
        return self.inline(job, out) if inline else out

    def finish(self, job: FakeJob, request: httpx.Request) -> dict[str, Any]:
        """The job's view, run to its end first under ``?wait=`` (when this fake has long polls)."""
        if self.long_poll and float(request.url.params.get("wait", 0)) > 0:
            while job.state not in ("succeeded", "failed", "cancelled"):
                self._advance(job)
        return self.view(job, inline=self.long_poll and "images" in request.url.params.get_list("include"))

    def inline(self, job: FakeJob, out: dict[str, Any]) -> dict[str, Any]:
        for row in (out["result"] or {}).get("images", []):
            raw = png_bytes(infotext=f"{job.body['prompt']}\nSeed: {row['seed']}")
            row["data"] = base64.b64encode(raw).decode()
        return out

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        path = request.url.path
        if request.method == "POST" and path == "/api/v1/jobs":
            return self._submit(request)
        if request.method == "POST" and path == "/api/v1/uploads" and self.uploads_enabled:
            upload_id = "img_" + hashlib.sha256(request.content).hexdigest()[:24]
            self.uploads[upload_id] = request.content
            return httpx.Response(201, json={"id": upload_id, "url": f"/api/v1/images/{upload_id}"})
        if request.method == "GET" and path == "/api/v1/jobs":
            return httpx.Response(
                200, json={"data": [self.view(j) for j in self.jobs.values()], "next_cursor": None}
            )
        if path.startswith("/api/v1/images/img_"):
            job_id, _, index = path.removeprefix("/api/v1/images/img_").rpartition("_")
            seed = int(self.jobs[job_id].body.get("seed", 7)) + int(index)
            return httpx.Response(
                200,
                content=png_bytes(infotext=f"{self.jobs[job_id].body['prompt']}\nSeed: {seed}"),
                headers={"content-type": "image/png"},
            )
        if path == "/api/v1/models":
            return httpx.Response(200, json={"data": [{"name": "sdgate-demo-shapes", "title": "Demo"}]})
        parts = path.split("/")
        if len(parts) >= 5 and parts[3] == "jobs":
            job = self.jobs.get(parts[4])
            if job is None:
                return httpx.Response(404, json={"error": {"code": "not_found", "message": "no such job"}})
            if len(parts) == 5 and request.method == "GET":
                self._advance(job)
                return httpx.Response(200, json=self.finish(job, request))
            if len(parts) == 5 and request.method == "DELETE":
                del self.jobs[job.id]
                return httpx.Response(204)
            if parts[5:] == ["retry"] and request.method == "POST":
                if job.state not in ("succeeded", "failed", "cancelled"):
                    return httpx.Response(
                        409, json={"error": {"code": "conflict", "message": "still running"}}
                    )
                new = FakeJob(id=f"job_{next(self.ids):04d}", body=job.body, polls_left=self.steps)
                self.jobs[new.id] = new
                return httpx.Response(202, json=self.view(new))
            if parts[5:] == ["cancel"] and request.method == "POST":
                if job.state not in ("succeeded", "failed"):
                    job.state = "cancelled"
                    self._event(job, "cancelled")
                return httpx.Response(200, json=self.view(job))
            if parts[5:] == ["events"]:
                return self._events(job, request)
        return httpx.Response(404, json={"error": {"code": "not_found", "message": f"no route {path}"}})

    def _submit(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        digest = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
        key = request.headers.get("idempotency-key")
        if key and key in self.keys:
            job_id, old = self.keys[key]
            if old != digest:
                return httpx.Response(409, json={"error": {"code": "conflict", "message": "key reused"}})
            return httpx.Response(202, json=self.finish(self.jobs[job_id], request))
        for name in ("init_image", "mask"):
            value = body.get(name)
            if isinstance(value, str) and value.startswith("img_") and value not in self.uploads:
                error = {"code": "not_found", "message": f"{name}: no upload {value}", "field": name}
                return httpx.Response(404, json={"error": error})
        job = FakeJob(id=f"job_{next(self.ids):04d}", body=body, polls_left=self.steps)
        self.jobs[job.id] = job
        self._event(job, "queued", position=0)
        if key:
            self.keys[key] = (job.id, digest)
        return httpx.Response(202, json=self.finish(job, request))

    def _events(self, job: FakeJob, request: httpx.Request) -> httpx.Response:
        if not self.sse:
            return httpx.Response(404, json={"error": {"code": "not_found", "message": "no SSE"}})
        cut = "cut" in job.body["prompt"] and job.id not in self.cut_done
        if cut:  # the connection drops after the first event, mid-job
            self.cut_done.add(job.id)
        while not cut and job.state not in ("succeeded", "failed", "cancelled"):
            self._advance(job)
        after = int(request.headers.get("last-event-id", "0"))
        events = [e for e in job.events if e[0] > after][: 1 if cut else None]
        if self.sse_jobs:  # the terminal event carries the job (its images under ?include=images)
            inline = self.sse_images and "images" in request.url.params.get_list("include")
            terminal = ("succeeded", "failed", "cancelled")
            events = [
                (eid, name, {"job_id": job.id, **self.view(job, inline=inline)} if name in terminal else data)
                for eid, name, data in events
            ]
        text = "".join(
            f"id: {eid}\nevent: {name}\ndata: {json.dumps(data)}\n\n" for eid, name, data in events
        )
        return httpx.Response(
            200, content=(": hello\n\n" + text).encode(), headers={"content-type": "text/event-stream"}
        )
