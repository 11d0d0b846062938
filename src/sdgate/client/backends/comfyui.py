"""ComfyUI: the standard txt2img / img2img / inpaint workflows built in code, submitted to
``/prompt``, followed on ``/ws`` (polling ``/history`` where there is no socket), images fetched
from ``/view``.

ComfyUI needs a concrete seed and a checkpoint file name: an unseeded request gets a random seed
chosen here (so the result still reports it), and with no ``model`` the first checkpoint that
``/object_info/CheckpointLoaderSimple`` lists is used. A batch shares one seed (ComfyUI's rule).
"""

from __future__ import annotations

import logging
import random
import uuid
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
from sdgate.client.backends._images import repaint_as_transparency

log = logging.getLogger("sdgate.client")
MAX_SEED = 2**64 - 1
SAMPLERS = {  # A1111 name -> ComfyUI sampler_name
    "Euler": "euler",
    "Euler a": "euler_ancestral",
    "Heun": "heun",
    "DPM2": "dpm_2",
    "DPM2 a": "dpm_2_ancestral",
    "LMS": "lms",
    "DPM fast": "dpm_fast",
    "DPM adaptive": "dpm_adaptive",
    "DPM++ 2S a": "dpmpp_2s_ancestral",
    "DPM++ SDE": "dpmpp_sde",
    "DPM++ 2M": "dpmpp_2m",
    "DPM++ 2M SDE": "dpmpp_2m_sde",
    "DPM++ 2M SDE Heun": "dpmpp_2m_sde_heun",
    "DPM++ 3M SDE": "dpmpp_3m_sde",
    "DDPM": "ddpm",
    "LCM": "lcm",
    "DDIM": "ddim",
    "UniPC": "uni_pc",
    "Restart": "euler",
}
SCHEDULERS = {  # A1111 schedule type (lower case) -> ComfyUI scheduler
    "automatic": "normal",
    "normal": "normal",
    "karras": "karras",
    "exponential": "exponential",
    "sgm uniform": "sgm_uniform",
    "sgm_uniform": "sgm_uniform",
    "simple": "simple",
    "beta": "beta",
    "uniform": "normal",
    "ddim": "ddim_uniform",
    "kl optimal": "kl_optimal",
    "kl_optimal": "kl_optimal",
}
DEFAULTS = {"width": 512, "height": 512, "steps": 20, "cfg": 7.0}


def build_workflow(
    request: ImageRequest, *, ckpt_name: str, seed: int, image_name: str | None = None
) -> dict:
    """The API-format graph (node ids as in ComfyUI's own script examples)."""
    graph: dict[str, dict[str, Any]] = {
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt_name}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": request.prompt, "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": request.negative_prompt, "clip": ["4", 1]}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "sdgate", "images": ["8", 0]}},
    }
    denoise = 1.0
    if request.mode == "txt2img":
        graph["5"] = {
            "class_type": "EmptyLatentImage",
            "inputs": {
                "width": request.width or DEFAULTS["width"],
                "height": request.height or DEFAULTS["height"],
                "batch_size": request.batch_size,
            },
        }
        latent = ["5", 0]
    else:
        assert image_name is not None
        graph["10"] = {"class_type": "LoadImage", "inputs": {"image": image_name}}
        if request.mode == "img2img":
            graph["11"] = {"class_type": "VAEEncode", "inputs": {"pixels": ["10", 0], "vae": ["4", 2]}}
            denoise = request.denoising_strength if request.denoising_strength is not None else 0.75
        else:
            graph["11"] = {
                "class_type": "VAEEncodeForInpaint",
                "inputs": {"pixels": ["10", 0], "vae": ["4", 2], "mask": ["10", 1], "grow_mask_by": 6},
            }
            denoise = request.denoising_strength if request.denoising_strength is not None else 1.0
        latent = ["11", 0]
        if request.batch_size > 1:
            graph["12"] = {
                "class_type": "RepeatLatentBatch",
                "inputs": {"samples": latent, "amount": request.batch_size},
            }
            latent = ["12", 0]
    graph["3"] = {
        "class_type": "KSampler",
        "inputs": {
            "seed": seed,
            "steps": request.steps or DEFAULTS["steps"],
            "cfg": request.cfg_scale if request.cfg_scale is not None else DEFAULTS["cfg"],
            "sampler_name": SAMPLERS.get(request.sampler or "Euler", "euler"),
            "scheduler": SCHEDULERS.get((request.scheduler or "automatic").lower(), "normal"),
            "denoise": denoise,
            "model": ["4", 0],
            "positive": ["6", 0],
            "negative": ["7", 0],
            "latent_image": latent,
        },
    }
    return graph


class ComfyUIBackend(Backend):
    kind: ClassVar[str] = "comfyui"
    modes: ClassVar[frozenset[str]] = frozenset({"txt2img", "img2img", "inpaint"})
    unsupported: ClassVar[dict[str, str]] = {
        "priority": "ComfyUI's queue order is not exposed as a priority here",
        "metadata": "no job metadata",
        "callback_url": "no webhooks: only sdgate's job API calls back",
        **without_a1111_extras("the SDK's ComfyUI graph"),
    }
    strip_suffixes: ClassVar[tuple[str, ...]] = ("/api",)

    def __init__(self, base_url: str, *, websocket: bool = True, **options: Any) -> None:
        """``websocket=False`` follows prompts by polling ``/history`` instead of ``/ws``."""
        super().__init__(base_url, **options)
        self.websocket = websocket

    def ignored_fields(self, request: ImageRequest) -> tuple[str, ...]:
        ignored = list(super().ignored_fields(request))
        if request.sampler is not None and request.sampler not in SAMPLERS:
            ignored.append("sampler")
        if request.scheduler is not None and request.scheduler.lower() not in SCHEDULERS:
            ignored.append("scheduler")
        return tuple(ignored)

    def _checkpoint(self, request: ImageRequest) -> Gen:
        if request.model or self.model:
            return request.model or self.model
        resp = yield Call("GET", self.url("/object_info/CheckpointLoaderSimple"))
        try:
            names = resp.json()["CheckpointLoaderSimple"]["input"]["required"]["ckpt_name"][0]
        except (KeyError, IndexError, TypeError, ValueError):
            names = []
        if isinstance(names, str) or not names:
            raise ConfigurationError("ComfyUI lists no checkpoints: pass model=<checkpoint file name>")
        return str(names[0])

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
        ckpt = yield from self._checkpoint(request)
        image_name = (yield from self._upload(request)) if request.mode != "txt2img" else None
        seed = request.seed if request.seed is not None else random.randint(0, 2**53)
        graph = build_workflow(request, ckpt_name=ckpt, seed=seed, image_name=image_name)
        client_id = uuid.uuid4().hex
        socket = None
        if self.websocket:  # connect first, so that no event of this prompt is missed
            try:
                socket = yield Subscribe(Call("GET", self.url("/ws"), params={"clientId": client_id}), "ws")
            except APIError as exc:
                log.info("ComfyUI /ws unavailable (%s): following /history instead", exc)
        resp = yield Call("POST", self.url("/prompt"), json={"prompt": graph, "client_id": client_id})
        prompt_id = str(resp.json().get("prompt_id") or "")
        if not prompt_id:
            raise APIResponseError("/prompt: no prompt_id in the answer")
        if ctx.progress:
            yield Emit(ProgressEvent(kind="queued", job_id=prompt_id))
        entry = None
        if socket is not None:
            entry = yield from self._follow_ws(socket, prompt_id, ctx)
        if entry is None:
            entry = yield from self._wait(prompt_id, ctx)
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
        return result_from_images(
            blobs, [seed] * len(blobs), backend=self.kind, where="comfyui", job_id=prompt_id
        )

    def _follow_ws(self, socket: int, prompt_id: str, ctx: Context) -> Gen:
        """Follow the prompt's events on ``/ws`` to ``executing`` with ``node: null`` (ComfyUI's done
        signal), then read its history entry; ``None`` if the socket broke first (poll instead)."""
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
                if ctx.progress and kind == "execution_start":
                    yield Emit(ProgressEvent(kind="started", job_id=prompt_id))
                elif ctx.progress and kind == "progress":
                    yield Emit(
                        ProgressEvent(
                            kind="progress",
                            job_id=prompt_id,
                            step=int(data.get("value") or 0),
                            total=int(data.get("max") or 0),
                            data={**data, "preview": preview} if preview else data,
                        )
                    )
        except APIConnectionError:
            done = False
        yield Close(socket)
        if not done:
            return None
        resp = yield Call("GET", self.url(f"/history/{prompt_id}"))
        entry = (resp.json() or {}).get(prompt_id)
        if entry and (entry.get("status") or {}).get("status_str") == "error":
            raise JobFailedError(
                f"ComfyUI prompt {prompt_id} failed: {_error_text(entry['status'])}",
                code="execution_error",
                job_id=prompt_id,
            )
        return entry or None

    def _wait(self, prompt_id: str, ctx: Context) -> Gen:
        started = False
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

    def list_models(self) -> Gen:
        resp = yield Call("GET", self.url("/object_info/CheckpointLoaderSimple"))
        try:
            names = resp.json()["CheckpointLoaderSimple"]["input"]["required"]["ckpt_name"][0]
        except (KeyError, IndexError, TypeError, ValueError):
            names = []
        return [Model(name=str(n), title=str(n)) for n in names if isinstance(names, list)]


def _error_text(status: dict[str, Any]) -> str:
    for name, data in status.get("messages") or []:
        if name == "execution_error" and isinstance(data, dict):
            return f"{data.get('exception_type', 'error')}: {data.get('exception_message', '')}".strip()
        if name == "execution_interrupted":
            return "interrupted"
    return status.get("status_str", "error")
