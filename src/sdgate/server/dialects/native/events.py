"""Live job events: Server-Sent Events per job, and a WebSocket for all of a caller's jobs.

SSE (``GET /api/v1/jobs/{id}/events``)::

    id: 7
    event: progress
    data: {"job_id": "job_01J...", "step": 5, "total": 25, "eta_s": 1.2, ...}

A new stream starts with the job's current state (its latest state event, then its latest
progress); one that sends ``Last-Event-ID`` gets every logged event after that id instead. The
stream ends after the terminal event (``succeeded``, ``failed``, ``cancelled``). The log is read
again on every wake-up and every ``poll_s``, so events written by another process arrive too (the
log is the job outbox, written with every change), and a job whose row is ahead of the log (a
row changed outside the store, or a log row lost to retention) still ends the stream.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.websockets import WebSocket, WebSocketDisconnect

from sdgate.core.errors import InvalidRequest, NotFound
from sdgate.core.jobs import Job, JobEventKind, JobState
from sdgate.jobs.eventlog import LoggedEvent
from sdgate.server.auth import Principal
from sdgate.server.dialects.native import images as native_images
from sdgate.server.dialects.native import translate
from sdgate.server.runtime import ServerRuntime

log = logging.getLogger("sdgate.native")

POLL_S = 1.0
KEEPALIVE_S = 15.0
# A stream of a job that is still going is closed after this long; the client reconnects with
# Last-Event-ID (EventSource does so by itself). This bounds how long a graceful server shutdown
# waits for open streams.
MAX_STREAM_S = 300.0
_STATE_KIND = {
    JobState.QUEUED: JobEventKind.QUEUED,
    JobState.RUNNING: JobEventKind.STARTED,
    JobState.SUCCEEDED: JobEventKind.SUCCEEDED,
    JobState.FAILED: JobEventKind.FAILED,
    JobState.CANCELLED: JobEventKind.CANCELLED,
}


def parse_last_event_id(value: str | None) -> int | None:
    if value is None or not value.strip():
        return None
    try:
        seq = int(value.strip())
    except ValueError:
        raise InvalidRequest(
            "Last-Event-ID: must be an event id this stream sent", field="Last-Event-ID"
        ) from None
    if seq < 0:
        raise InvalidRequest("Last-Event-ID: must not be negative", field="Last-Event-ID")
    return seq


def sse_message(kind: JobEventKind, data: dict[str, Any], seq: int | None = None) -> str:
    lines = [f"id: {seq}"] if seq is not None else []
    lines += [f"event: {kind.value}", "data: " + json.dumps(data, separators=(",", ":"))]
    return "\n".join(lines) + "\n\n"


def _synthetic(runtime: ServerRuntime, job: Job) -> LoggedEvent:
    """An event made from the job row itself (no logged event says it)."""
    kind = _STATE_KIND[job.state]
    data = translate.event_data(kind, job, base=runtime.base)
    return LoggedEvent(seq=0, job_id=job.id, kind=kind, data=data)


class _Previews:
    """Attaches a small live preview to progress events every ``every`` steps, rendered here (on
    the API's thread pool) from the worker's latest latents, never on the generating thread."""

    def __init__(self, runtime: ServerRuntime, job_id: str, every: int) -> None:
        self._runtime = runtime
        self._job_id = job_id
        self._every = every
        self._bucket = 0

    async def attach(self, event: LoggedEvent) -> dict[str, Any]:
        if self._every <= 0 or event.kind is not JobEventKind.PROGRESS:
            return event.data
        bucket = int(event.data.get("step", 0)) // self._every
        if bucket <= self._bucket:
            return event.data
        self._bucket = bucket
        try:
            image = await run_in_threadpool(self._runtime.services.current_preview, self._job_id)
            if image is None:
                return event.data
            uri = await run_in_threadpool(native_images.preview_data_uri, image)
        except Exception:  # a preview is a nicety
            log.debug("job %s: no preview", self._job_id, exc_info=True)
            return event.data
        return {**event.data, "preview": uri}


class _Shown:
    """How far a stream has told its client: the job's state and its step."""

    def __init__(self) -> None:
        self.state = ""
        self.step = 0

    def repeats(self, event: LoggedEvent) -> bool:
        """True for an event that tells nothing new (a logged copy of what a poll already showed)."""
        if event.terminal:
            return False
        if event.kind is JobEventKind.PROGRESS:
            return self.state == JobState.RUNNING.value and int(event.data.get("step") or 0) <= self.step
        return str(event.data.get("state", "")) == self.state

    def update(self, event: LoggedEvent) -> None:
        if event.kind is JobEventKind.PROGRESS:
            self.state, self.step = JobState.RUNNING.value, int(event.data.get("step") or 0)
        else:
            self.state = str(event.data.get("state", ""))
            self.step = int((event.data.get("progress") or {}).get("step") or 0)

    def news(self, runtime: ServerRuntime, job: Job) -> LoggedEvent | None:
        """A synthetic event when the job row is ahead of what was shown."""
        if job.state.value != self.state:
            return _synthetic(runtime, job)
        if job.state is JobState.RUNNING and job.progress is not None:
            data = translate.event_data(JobEventKind.PROGRESS, job, base=runtime.base)
            if int(data["step"]) > self.step:
                return LoggedEvent(seq=0, job_id=job.id, kind=JobEventKind.PROGRESS, data=data)
        return None


async def job_stream(runtime: ServerRuntime, job: Job, last_event_id: int | None,
                     *, poll_s: float | None = None, max_s: float = MAX_STREAM_S,
                     previews: int | None = None) -> AsyncIterator[str]:
    """The SSE body for one job (the caller checked the job exists and is theirs); ``previews``: a
    preview every that many steps (None: the server's ``preview_every_n_steps``)."""
    poll_s = POLL_S if poll_s is None else poll_s
    events = runtime.events
    shown = _Shown()
    close_at = asyncio.get_running_loop().time() + max_s
    every = runtime.services.settings.preview_every_n_steps if previews is None else previews
    preview = _Previews(runtime, job.id, every)
    with events.subscribe(job_id=job.id) as doorbell:
        yield "retry: 2000\n\n"
        if last_event_id is None:
            backlog = await run_in_threadpool(events.snapshot, job.id)
            if not backlog:
                backlog = [_synthetic(runtime, job)]
        else:
            backlog = await run_in_threadpool(events.read, job.id, last_event_id)
        cursor = last_event_id or 0
        quiet_s = 0.0
        ahead = 0  # polls in a row that found the job ahead of the log
        while True:
            for event in backlog:
                cursor = max(cursor, event.seq)
                if shown.repeats(event):
                    continue
                shown.update(event)
                yield sse_message(event.kind, await preview.attach(event), event.seq or None)
                if event.terminal:
                    return
            if asyncio.get_running_loop().time() > close_at:
                return
            woke = await doorbell.next(timeout=poll_s)
            backlog = await run_in_threadpool(events.read, job.id, cursor)
            if backlog:
                quiet_s, ahead = 0.0, 0
                continue
            if woke is not None:
                continue
            quiet_s += poll_s
            if quiet_s >= KEEPALIVE_S:
                quiet_s = 0.0
                yield ": keep-alive\n\n"
            # Nothing logged for a while: ask the job itself, in case its row is ahead of the log
            # (a belt to the outbox's braces: the store writes both in one transaction).
            try:
                current = await run_in_threadpool(runtime.services.store.get, job.id)
            except NotFound:
                return  # deleted under us
            news = shown.news(runtime, current)
            ahead = ahead + 1 if news is not None else 0
            if news is not None and ahead >= 2:  # a logged event would have shown up by now
                backlog, ahead = [news], 0


async def fan_out(runtime: ServerRuntime, websocket: WebSocket, principal: Principal) -> None:
    """``/api/v1/events``: every event of the caller's jobs (every job for an admin, and without
    auth), as JSON messages ``{"id", "event", "data"}``, until the client goes away."""
    await websocket.accept()
    user = principal.id
    with runtime.events.subscribe(owner=user, any_owner=principal.is_admin) as subscription:
        closed = asyncio.Event()

        async def watch_close() -> None:
            try:
                while True:
                    message = await websocket.receive()
                    if message["type"] == "websocket.disconnect":
                        break
            except (WebSocketDisconnect, RuntimeError):
                pass
            closed.set()

        watcher = asyncio.create_task(watch_close())
        try:
            await websocket.send_json({"event": "hello", "data": {"user": user}})
            while not closed.is_set():
                event = await subscription.next(timeout=0.5)
                if event is not None:
                    message = {"id": event.seq, "event": event.kind.value, "data": event.data}
                    await websocket.send_json(message)
        except (WebSocketDisconnect, RuntimeError):
            pass
        finally:
            watcher.cancel()
