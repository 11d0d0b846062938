"""ComfyUI's ``/ws``: each prompt's events, as ComfyUI sends them, to its submitter's sockets.

One ``ComfySockets`` per server process listens to the job event bus while a socket is open
(``JobEvents``: in a cluster it hears the other nodes' jobs through the outbox) and turns the events
of ComfyUI jobs into ComfyUI messages:

    queued                 status (the owner's queue_remaining)
    started                execution_start, status
    progress               execution_cached {nodes} at the first one heard (the executor tells the
                           nodes it serves from its cache before the first node runs);
                           executing {node} when the node changes; progress {value, max, node};
                           a binary preview frame (throttled) when the worker has one
    succeeded              execution_cached {nodes} if no progress was heard, executed {node,
                           output} per output node, execution_success, executing {node: null},
                           status
    failed                 execution_error, executing {node: null}, status
    cancelled (had run)    execution_interrupted, executing {node: null}, status

A socket is keyed by (principal, clientId): a prompt's messages go to the socket of its
``client_id`` among its owner's sockets (no client id: to every socket of its owner), never to
another principal's socket, whatever client id that one claims. A reconnect with the same clientId
replaces the old socket and is told the node its running prompt is on. Each socket has its own
send queue, so a slow client delays only itself; progress and previews are dropped for a client
that far behind, never the state messages.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from starlette.websockets import WebSocket, WebSocketDisconnect

from sdgate.core.jobs import Job, JobEventKind, JobState
from sdgate.jobs.comfy_files import owner_key
from sdgate.server.auth import Principal
from sdgate.server.dialects.comfy import translate
from sdgate.server.services import Services

log = logging.getLogger("sdgate.comfy")

DIALECT = "comfy"
MAX_BACKLOG = 256  # frames queued for one socket past which progress and previews are dropped
MAX_QUEUED = 4096  # ... and past which everything is: a client that reads nothing costs bounded memory
PREVIEW_EVERY_S = 0.5  # at most one preview frame per prompt this often
PREVIEW_SIZE = 512  # ComfyUI's --preview-size
STATUS_DELAY_S = 0.05  # queue changes within this coalesce into one status message
MAX_QUEUE_COUNT = 10_000
MAX_SOCKETS = 64  # open sockets per principal; one more is closed at once (1013: try again later)
MAX_TRACKED = 10_000  # running prompts followed at once (what was missed of them is forgotten)
_ACTIVE = (JobState.QUEUED, JobState.RUNNING)


def prompt_id_of(job: Job) -> str:
    value = job.metadata.get("comfy_prompt_id") if job.metadata else None
    return value if isinstance(value, str) and value else job.id


def queue_remaining(services: Services, owner: str | None) -> int:
    """``owner``'s ComfyUI prompts queued or running (sync)."""
    return len(services.store.list(states=_ACTIVE, dialect=DIALECT, owner=owner, limit=MAX_QUEUE_COUNT))


@dataclass(eq=False)
class Connection:
    sid: str
    owner: str  # owner_key of the principal
    websocket: WebSocket
    preview_metadata: bool = False
    queue: asyncio.Queue[dict[str, Any] | bytes | None] = field(default_factory=asyncio.Queue)

    def push(self, item: dict[str, Any] | bytes, *, droppable: bool = False) -> None:
        queued = self.queue.qsize()
        if queued >= MAX_QUEUED or (droppable and queued >= MAX_BACKLOG):
            return
        self.queue.put_nowait(item)

    async def send_all(self) -> None:
        while True:
            item = await self.queue.get()
            if item is None:
                return
            if isinstance(item, bytes):
                await self.websocket.send_bytes(item)
            else:
                await self.websocket.send_json(item)


@dataclass
class _Seen:
    node: str | None = None
    previewed_at: float = 0.0
    started: bool = False
    cached_sent: bool = False  # execution_cached: once a prompt, before its first executing


def _told_cached(job: Job) -> list[str]:
    """The cached nodes the executor told before the job ended without a result (none heard)."""
    return list(job.progress.cached or ()) if job.progress is not None else []


class ComfySockets:
    def __init__(self, services: Services) -> None:
        self.services = services
        self._sockets: dict[tuple[str, str], Connection] = {}
        self._seen: dict[str, _Seen] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._status_due: set[str | None] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        # Listening only while a socket is open: a node's outbox follower then reads other nodes'
        # progress events only when someone here would hear them (``JobEvents.wants``).
        self._remove: Callable[[], None] | None = None

    def _listen(self) -> None:
        if self._sockets and self._remove is None:
            self._remove = self.services.events.add_listener(self._heard)
        elif not self._sockets and self._remove is not None:
            self._remove()
            self._remove = None

    # -- the bus (any thread) -> the loop ------------------------------------------------------

    def _heard(self, kind: JobEventKind, job: Job) -> None:
        loop = self._loop
        if job.dialect != DIALECT or loop is None or not self._sockets:
            return
        with contextlib.suppress(RuntimeError):  # the loop closed: the server is stopping
            loop.call_soon_threadsafe(self._on_event, kind, job)

    def _targets(self, job: Job) -> list[Connection]:
        owner = owner_key(job.owner)
        request = translate.graph_of(job)
        client_id = request.client_id if request is not None else None
        if client_id:
            found = self._sockets.get((owner, client_id))
            return [found] if found is not None else []
        return [c for (o, _), c in self._sockets.items() if o == owner]

    def _on_event(self, kind: JobEventKind, job: Job) -> None:
        prompt_id = prompt_id_of(job)
        targets = self._targets(job)
        if job.id not in self._seen and len(self._seen) >= MAX_TRACKED:
            self._seen.pop(next(iter(self._seen)))  # the oldest: its end was not heard here
        seen = self._seen.setdefault(job.id, _Seen())
        if kind is JobEventKind.QUEUED:
            self._status_soon(job.owner)
        elif kind is JobEventKind.STARTED:
            self._start(seen, job, prompt_id, targets)
            self._status_soon(job.owner)
        elif kind is JobEventKind.PROGRESS:
            if not seen.started:
                self._start(seen, job, prompt_id, targets)
            self._progress(seen, job, prompt_id, targets)
        else:
            self._seen.pop(job.id, None)
            self._finish(kind, seen, job, prompt_id, targets)
            self._status_soon(job.owner)

    def _start(self, seen: _Seen, job: Job, prompt_id: str, targets: list[Connection]) -> None:
        seen.started = True
        at = translate.timestamp(job.started_at)
        for conn in targets:
            conn.push(translate.message("execution_start", {"prompt_id": prompt_id, "timestamp": at}))

    @staticmethod
    def _cached(seen: _Seen, nodes: list[str], job: Job, prompt_id: str) -> list[dict[str, Any]]:
        """``execution_cached`` with ``nodes``, unless this prompt's was sent already."""
        if seen.cached_sent:
            return []
        seen.cached_sent = True
        data = {"nodes": nodes, "prompt_id": prompt_id, "timestamp": translate.timestamp(job.started_at)}
        return [translate.message("execution_cached", data)]

    def _progress(self, seen: _Seen, job: Job, prompt_id: str, targets: list[Connection]) -> None:
        progress = job.progress
        if progress is None or not targets:
            return
        # The executor tells its cached nodes in a progress of their own before the first node
        # runs, so the first progress heard here has them (heard from mid-job on: none).
        for message in self._cached(seen, list(progress.cached or ()), job, prompt_id):
            for conn in targets:
                conn.push(message)
        if progress.node and progress.node != seen.node:
            seen.node = progress.node
            for conn in targets:
                conn.push(translate.executing(progress.node, prompt_id))
        if progress.steps > 0 and progress.step > 0:
            data = {"value": progress.step, "max": progress.steps, "prompt_id": prompt_id,
                    "node": progress.node or seen.node}
            for conn in targets:
                conn.push(translate.message("progress", data), droppable=True)
            now = time.monotonic()
            if self.services.settings.preview_method != "none" and now - seen.previewed_at >= PREVIEW_EVERY_S:
                seen.previewed_at = now
                self._spawn(self._send_preview(job.id, progress.node or seen.node, prompt_id, targets))

    def _finish(self, kind: JobEventKind, seen: _Seen, job: Job, prompt_id: str,
                targets: list[Connection]) -> None:
        messages: list[dict[str, Any]] = []
        if kind is JobEventKind.SUCCEEDED:
            if not seen.started:  # its start was not heard here (another node, or a quick job)
                self._start(seen, job, prompt_id, targets)
            messages += self._cached(seen, translate.cached_nodes(job), job, prompt_id)
            for node, output in translate.node_outputs(job).items():
                messages.append(translate.executed(node, output, prompt_id))
            at = translate.timestamp(job.finished_at)
            messages.append(translate.message("execution_success", {"prompt_id": prompt_id, "timestamp": at}))
        elif kind is JobEventKind.FAILED:
            if seen.started:
                messages += self._cached(seen, _told_cached(job), job, prompt_id)
            messages.append(translate.message("execution_error", translate.execution_error(job, prompt_id)))
        elif kind is JobEventKind.CANCELLED:
            if job.started_at is None:  # deleted from the queue before it ran: only the status changes
                return
            if seen.started:
                messages += self._cached(seen, _told_cached(job), job, prompt_id)
            messages.append(translate.message("execution_interrupted",
                                              translate.execution_interrupted(job, prompt_id)))
        else:
            return
        messages.append(translate.executing(None, prompt_id))
        for conn in targets:
            for item in messages:
                conn.push(item)

    async def _send_preview(self, job_id: str, node: str | None, prompt_id: str,
                            targets: list[Connection]) -> None:
        try:
            image = await asyncio.to_thread(self.services.current_preview, job_id)
            if image is None:
                return
            jpeg = await asyncio.to_thread(_jpeg, image)
        except Exception:  # a preview is a nicety
            log.debug("job %s: no preview", job_id, exc_info=True)
            return
        plain = translate.preview_frame(jpeg)
        with_meta = None
        for conn in targets:
            if conn.preview_metadata:
                with_meta = with_meta or translate.preview_frame(
                    jpeg, metadata=translate.preview_metadata(node, prompt_id))
                conn.push(with_meta, droppable=True)
            else:
                conn.push(plain, droppable=True)

    def _status_soon(self, owner: str | None) -> None:
        if owner in self._status_due or not any(c.owner == owner_key(owner) for c in self._sockets.values()):
            return
        self._status_due.add(owner)
        self._spawn(self._send_status(owner))

    async def _send_status(self, owner: str | None) -> None:
        await asyncio.sleep(STATUS_DELAY_S)
        self._status_due.discard(owner)
        try:
            remaining = await asyncio.to_thread(queue_remaining, self.services, owner)
        except Exception:
            log.debug("comfy: no queue count", exc_info=True)
            return
        for conn in list(self._sockets.values()):
            if conn.owner == owner_key(owner):
                conn.push(translate.status_message(remaining))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- one socket ---------------------------------------------------------------------------------

    async def serve(self, websocket: WebSocket, principal: Principal, client_id: str | None) -> None:
        """Until the client goes away."""
        self._loop = asyncio.get_running_loop()
        await websocket.accept()
        sid = client_id if client_id else uuid.uuid4().hex
        conn = Connection(sid=sid, owner=owner_key(principal.id), websocket=websocket)
        key = (conn.owner, sid)
        old = self._sockets.get(key)
        if old is None and sum(c.owner == conn.owner for c in self._sockets.values()) >= MAX_SOCKETS:
            await websocket.close(code=1013, reason="too many sockets open")
            return
        if old is not None:  # a reconnect: the new socket takes the client id over
            old.queue.put_nowait(None)
            with contextlib.suppress(Exception):
                await old.websocket.close()
        self._sockets[key] = conn
        self._listen()
        sender = asyncio.create_task(conn.send_all())
        try:
            await self._greet(conn, principal)
            await self._read(conn)
        except (WebSocketDisconnect, RuntimeError):
            pass
        finally:
            if self._sockets.get(key) is conn:
                del self._sockets[key]
                self._listen()
            conn.queue.put_nowait(None)
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(sender, timeout=1.0)
            sender.cancel()

    async def _greet(self, conn: Connection, principal: Principal) -> None:
        """``status`` with the sid, and the node a running prompt of this client id is on."""
        remaining = await asyncio.to_thread(queue_remaining, self.services, principal.id)
        conn.push(translate.status_message(remaining, sid=conn.sid))
        running = await asyncio.to_thread(
            self.services.store.list, states=(JobState.RUNNING,), dialect=DIALECT, owner=principal.id,
            limit=50,
        )
        for job in running:
            request = translate.graph_of(job)
            if job.owner != principal.id or request is None or request.client_id != conn.sid:
                continue
            node = job.progress.node if job.progress is not None else None
            if node:
                conn.push(translate.executing(node, prompt_id_of(job)))

    async def _read(self, conn: Connection) -> None:
        """Answers the feature-flags handshake (the first text frame); ignores everything else."""
        first = True
        while True:
            message = await conn.websocket.receive()
            if message["type"] == "websocket.disconnect":
                return
            text = message.get("text")
            if text is None:
                continue
            if first:
                first = False
                flags = _feature_flags(text)
                if flags is not None:
                    conn.preview_metadata = bool(flags.get("supports_preview_metadata"))
                    conn.push(translate.message("feature_flags", server_features(self.services)))


def server_features(services: Services) -> dict[str, Any]:
    return {"supports_preview_metadata": True, "max_upload_size": services.settings.max_body_bytes}


def _feature_flags(text: str) -> dict[str, Any] | None:
    import json

    if len(text) > 65536:
        return None
    try:
        data = json.loads(text)
    except ValueError:
        return None
    if isinstance(data, dict) and data.get("type") == "feature_flags" and isinstance(data.get("data"), dict):
        return data["data"]
    return None


def _jpeg(image: Any) -> bytes:
    small = image.copy()
    small.thumbnail((PREVIEW_SIZE, PREVIEW_SIZE))
    if small.mode != "RGB":
        small = small.convert("RGB")
    out = io.BytesIO()
    small.save(out, format="JPEG", quality=95)
    return out.getvalue()
