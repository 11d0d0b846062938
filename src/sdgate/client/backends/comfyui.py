"""ComfyUI: the standard txt2img / img2img / inpaint workflows built in code, submitted to
``/prompt``, followed on ``/ws`` (polling ``/history`` where there is no socket), images fetched
from ``/view``.

ComfyUI needs a concrete seed and a checkpoint file name: an unseeded request gets a random seed
chosen here (so the result still reports it), and with no ``model`` the first checkpoint that
``/object_info/CheckpointLoaderSimple`` lists is used. A batch shares one seed (ComfyUI's rule).

The A1111-style fields that core nodes can express become nodes: ``loras`` a chain of
``LoraLoader``, ``vae`` a ``VAELoader``, ``clip_skip`` a ``CLIPSetLastLayer``, a latent ``hires``
fix a ``LatentUpscale(By)`` and a second ``KSampler``. ``n_iter`` submits the graph once per
iteration, the seed advanced by ``batch_size`` each time (A1111's rule). A hires sampler or
scheduler ComfyUI does not know falls back to the first pass's.
"""

from __future__ import annotations

import logging
import random
import uuid
from dataclasses import dataclass, field
from typing import Any, ClassVar

from sdgate.client._exceptions import (
    APIConnectionError,
    APIError,
    APIResponseError,
    ConfigurationError,
    JobFailedError,
)
from sdgate.client._ops import Call, Close, Emit, NextEvent, Sleep, Subscribe
from sdgate.client._types import ImageRequest, Model, ProgressEvent
from sdgate.client.backends._base import (
    Backend,
    Context,
    Gen,
    poll_delays,
    result_from_images,
    without_a1111_extras,
)
from sdgate.client.backends._comfy_graph import (
    FIRST_PASS,
    HIRES_PASS,
    SAMPLERS,
    SCHEDULERS,
    build_workflow,
    hires_applies,
)
from sdgate.client.backends._images import repaint_as_transparency
from sdgate.core.requests import MAX_SEED

log = logging.getLogger("sdgate.client")


@dataclass(slots=True)
class _Meter:
    """Progress across the KSamplers of every iteration as one count of steps."""

    iterations: int
    offsets: dict[str, int] = field(default_factory=dict)  # sampler node id -> steps before it
    per_prompt: int = 0
    iteration: int = 0

    @classmethod
    def of(cls, graph: dict[str, dict[str, Any]], iterations: int) -> _Meter:
        meter = cls(iterations)
        for node in (FIRST_PASS, HIRES_PASS):
            if node in graph:
                meter.offsets[node] = meter.per_prompt
                meter.per_prompt += int(graph[node]["inputs"]["steps"])
        return meter

    def count(self, data: dict[str, Any]) -> tuple[int, int]:
        value, most = int(data.get("value") or 0), int(data.get("max") or 0)
        node = str(data.get("node"))
        if node not in self.offsets:  # some other node reporting: its own count
            return value, most
        done_before = self.iteration * self.per_prompt + self.offsets[node]
        return done_before + value, self.iterations * self.per_prompt


HONOURED = ("n_iter", "clip_skip", "loras", "vae")


class ComfyUIBackend(Backend):
    kind: ClassVar[str] = "comfyui"
    modes: ClassVar[frozenset[str]] = frozenset({"txt2img", "img2img", "inpaint"})
    unsupported: ClassVar[dict[str, str]] = {
        "priority": "ComfyUI's queue order is not exposed as a priority here",
        "metadata": "no job metadata",
        "callback_url": "no webhooks: only sdgate's job API calls back",
        **{
            name: reason
            for name, reason in without_a1111_extras("the SDK's ComfyUI graph").items()
            if name not in HONOURED
        },
        **dict.fromkeys(("subseed", "subseed_strength"), "ComfyUI's core nodes have no variation seeds"),
        **dict.fromkeys(
            ("seed_resize_from_w", "seed_resize_from_h"), "ComfyUI's core nodes have no seed resize"
        ),
        "tiling": "ComfyUI's core nodes have no seamless tiling",
        **dict.fromkeys(
            ("eta", "s_churn", "s_tmin", "s_tmax", "s_noise", "eta_noise_seed_delta"),
            "ComfyUI's samplers take no per-request eta or noise settings",
        ),
        "styles": "styles are A1111's styles.csv, which ComfyUI does not have",
        "hires": (
            "ComfyUI's core nodes do a hires fix in txt2img with a latent upscaler only "
            "(Latent, Latent (bicubic), Latent (nearest), ...): image upscalers such as ESRGAN or "
            "Lanczos are not run here"
        ),
    }
    strip_suffixes: ClassVar[tuple[str, ...]] = ("/api",)

    def __init__(self, base_url: str, *, websocket: bool = True, **options: Any) -> None:
        """``websocket=False`` follows prompts by polling ``/history`` instead of ``/ws``."""
        super().__init__(base_url, **options)
        self.websocket = websocket

    def ignored_fields(self, request: ImageRequest) -> tuple[str, ...]:
        ignored = [
            name for name in super().ignored_fields(request) if name != "hires" or not hires_applies(request)
        ]
        if request.sampler is not None and request.sampler not in SAMPLERS:
            ignored.append("sampler")
        if request.scheduler is not None and request.scheduler.lower() not in SCHEDULERS:
            ignored.append("scheduler")
        return tuple(ignored)

    def _checkpoint(self, request: ImageRequest) -> Gen:
        if request.model or self.model:
            return request.model or self.model
        names = yield from self._checkpoint_names()
        if not names:
            raise ConfigurationError("ComfyUI lists no checkpoints: pass model=<checkpoint file name>")
        return names[0]

    def _upload(self, request: ImageRequest) -> Gen:
        assert request.init_image is not None
        data = request.init_image
        if request.mode == "inpaint":
            assert request.mask is not None
            data = repaint_as_transparency(data, request.mask)
        name = f"sdgate-{uuid.uuid4().hex[:12]}.png"
        resp = yield Call(
            "POST",
            self.url("/upload/image"),
            data={"type": "input", "overwrite": "true"},
            files=[("image", (name, data, "image/png"))],
        )
        return str(resp.json().get("name", name))

    def generate(self, request: ImageRequest, ctx: Context) -> Gen:
        """1. checkpoint and upload; 2. one socket for all iterations; 3. per iteration: submit the
        graph with its seed, follow it, fetch its images."""
        ckpt = yield from self._checkpoint(request)
        image_name = (yield from self._upload(request)) if request.mode != "txt2img" else None
        seed = request.seed if request.seed is not None else random.randint(0, 2**53)
        client_id = uuid.uuid4().hex
        socket = (yield from self._connect(client_id)) if self.websocket else None
        iterations = max(1, request.n_iter)
        blobs: list[bytes] = []
        seeds: list[int | None] = []
        first_id = ""
        meter: _Meter | None = None
        for iteration in range(iterations):
            iteration_seed = (seed + iteration * request.batch_size) & MAX_SEED  # A1111: image i, seed + i
            graph = build_workflow(request, ckpt_name=ckpt, seed=iteration_seed, image_name=image_name)
            meter = meter or _Meter.of(graph, iterations)
            meter.iteration = iteration
            prompt_id = yield from self._submit(graph, client_id)
            first_id = first_id or prompt_id
            if ctx.progress and iteration == 0:
                yield Emit(ProgressEvent(kind="queued", job_id=prompt_id))
            entry = None
            if socket is not None:
                entry = yield from self._follow_ws(socket, prompt_id, ctx, meter)
                if entry is None:
                    socket = None  # it broke (and is closed): poll from now on
            if entry is None:
                entry = yield from self._wait(prompt_id, ctx, announce=iteration == 0)
            fetched = yield from self._fetch(entry)
            blobs += fetched
            seeds += [iteration_seed] * len(fetched)
        if socket is not None:
            yield Close(socket)
        return result_from_images(blobs, seeds, backend=self.kind, where="comfyui", job_id=first_id)

    def _connect(self, client_id: str) -> Gen:
        """The ``/ws`` of ``client_id``, opened before any submission so no event is missed; ``None``
        where the server has none."""
        try:
            return (yield Subscribe(Call("GET", self.url("/ws"), params={"clientId": client_id}), "ws"))
        except APIError as exc:
            log.info("ComfyUI /ws unavailable (%s): following /history instead", exc)
            return None

    def _submit(self, graph: dict[str, Any], client_id: str) -> Gen:
        resp = yield Call("POST", self.url("/prompt"), json={"prompt": graph, "client_id": client_id})
        prompt_id = str(resp.json().get("prompt_id") or "")
        if not prompt_id:
            raise APIResponseError("/prompt: no prompt_id in the answer")
        return prompt_id

    def _fetch(self, entry: dict[str, Any]) -> Gen:
        blobs: list[bytes] = []
        for output in (entry.get("outputs") or {}).values():
            for image in (output or {}).get("images", []):
                if image.get("type", "output") != "output":
                    continue
                fetched = yield Call(
                    "GET",
                    self.url("/view"),
                    params={
                        "filename": image["filename"],
                        "subfolder": image.get("subfolder", ""),
                        "type": image.get("type", "output"),
                    },
                )
                blobs.append(fetched.content)
        return blobs

    def _follow_ws(self, socket: int, prompt_id: str, ctx: Context, meter: _Meter) -> Gen:
        """Follow the prompt's events on ``/ws`` to ``executing`` with ``node: null`` (ComfyUI's done
        signal), then read its history entry; ``None`` if the socket broke first (it is closed then:
        poll instead). ``started`` is told for the first iteration only, progress across them all."""
        done = False
        preview: bytes | None = None
        try:
            while not done:
                message = yield NextEvent(socket)
                if message is None:
                    break
                if isinstance(message, bytes):  # binary frames: 4-byte type 1 = a preview image
                    if message[:4] == b"\x00\x00\x00\x01":
                        preview = message[8:]
                    continue
                if not isinstance(message, dict):
                    continue
                kind, data = message.get("type"), message.get("data") or {}
                if data.get("prompt_id", prompt_id) != prompt_id:
                    continue
                if kind == "execution_error":
                    raise JobFailedError(
                        f"ComfyUI prompt {prompt_id} failed: {data.get('exception_type', 'error')}: "
                        f"{data.get('exception_message', '')}".rstrip(": "),
                        code="execution_error",
                        job_id=prompt_id,
                    )
                if kind == "execution_interrupted":
                    raise JobFailedError(
                        f"ComfyUI prompt {prompt_id} was interrupted", code="cancelled", job_id=prompt_id
                    )
                done = kind == "executing" and data.get("node") is None and "prompt_id" in data
                if ctx.progress and kind == "execution_start" and meter.iteration == 0:
                    yield Emit(ProgressEvent(kind="started", job_id=prompt_id))
                elif ctx.progress and kind == "progress":
                    step, total = meter.count(data)
                    extra = {"iteration": meter.iteration, **({"preview": preview} if preview else {})}
                    yield Emit(
                        ProgressEvent(
                            kind="progress", job_id=prompt_id, step=step, total=total, data={**data, **extra}
                        )
                    )
        except APIConnectionError:
            done = False
        if not done:
            yield Close(socket)
            return None
        resp = yield Call("GET", self.url(f"/history/{prompt_id}"))
        entry = (resp.json() or {}).get(prompt_id)
        if not entry:
            yield Close(socket)
            return None
        if (entry.get("status") or {}).get("status_str") == "error":
            raise JobFailedError(
                f"ComfyUI prompt {prompt_id} failed: {_error_text(entry['status'])}",
                code="execution_error",
                job_id=prompt_id,
            )
        return entry

    def _wait(self, prompt_id: str, ctx: Context, *, announce: bool = True) -> Gen:
        """Poll ``/history`` until the prompt is there; ``announce``: tell when it starts running."""
        started = not announce
        for delay in poll_delays(ctx.poll_initial, ctx.poll_max):
            resp = yield Call("GET", self.url(f"/history/{prompt_id}"))
            entry = (resp.json() or {}).get(prompt_id)
            if entry:
                status = entry.get("status") or {}
                if status.get("status_str") == "error" or status.get("completed") is False:
                    raise JobFailedError(
                        f"ComfyUI prompt {prompt_id} failed: {_error_text(status)}",
                        code="execution_error",
                        job_id=prompt_id,
                    )
                return entry
            if ctx.progress and not started:
                queue = (yield Call("GET", self.url("/queue"))).json()
                running = [item[1] for item in queue.get("queue_running", []) if len(item) > 1]
                if prompt_id in running:
                    started = True
                    yield Emit(ProgressEvent(kind="started", job_id=prompt_id))
            yield Sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover

    def _checkpoint_names(self) -> Gen:
        resp = yield Call("GET", self.url("/object_info/CheckpointLoaderSimple"))
        try:
            names = resp.json()["CheckpointLoaderSimple"]["input"]["required"]["ckpt_name"][0]
        except (KeyError, IndexError, TypeError, ValueError):
            return []
        return [str(n) for n in names] if isinstance(names, list) else []

    def list_models(self) -> Gen:
        return [Model(name=n, title=n) for n in (yield from self._checkpoint_names())]


def _error_text(status: dict[str, Any]) -> str:
    for name, data in status.get("messages") or []:
        if name == "execution_error" and isinstance(data, dict):
            return f"{data.get('exception_type', 'error')}: {data.get('exception_message', '')}".strip()
        if name == "execution_interrupted":
            return "interrupted"
    return status.get("status_str", "error")
