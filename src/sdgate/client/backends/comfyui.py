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
from sdgate.client._types import Hires, ImageRequest, Lora, Model, ProgressEvent
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
# A1111's latent hires upscalers -> LatentUpscale's upscale_method. ComfyUI has no plain "nearest"
# nor antialiasing; antialiasing only acts when shrinking, so for a hires fix (which enlarges) the
# antialiased modes draw the same as the plain ones.
LATENT_UPSCALERS = {
    "latent": "bilinear",
    "latent (antialiased)": "bilinear",
    "latent (bicubic)": "bicubic",
    "latent (bicubic antialiased)": "bicubic",
    "latent (nearest)": "nearest-exact",
    "latent (nearest-exact)": "nearest-exact",
}
MODEL_EXTENSIONS = (".safetensors", ".sft", ".ckpt", ".pt", ".pth", ".bin")
VAE_OF_CHECKPOINT = {"", "automatic", "none"}  # A1111's names for "the checkpoint's own VAE"
DEFAULTS = {"width": 512, "height": 512, "steps": 20, "cfg": 7.0}
FIRST_PASS, HIRES_PASS = "3", "14"  # the KSampler node ids, in the order they run
LORA_NODE_BASE = 100  # LoraLoader i is node str(100 + i)


def model_file(name: str) -> str:
    """A file name as ComfyUI's loaders list it: A1111-style bare names get ``.safetensors``."""
    return name if name.lower().endswith(MODEL_EXTENSIONS) else f"{name}.safetensors"


def latent_upscale_method(hires: Hires) -> str | None:
    """``upscale_method`` for a latent hires upscaler; ``None`` for an image upscaler (ESRGAN...)."""
    return LATENT_UPSCALERS.get(hires.upscaler.strip().lower())


def hires_applies(request: ImageRequest) -> bool:
    return (
        request.hires is not None
        and request.mode == "txt2img"
        and latent_upscale_method(request.hires) is not None
    )


def build_workflow(
    request: ImageRequest, *, ckpt_name: str, seed: int, image_name: str | None = None
) -> dict:
    """The API-format graph (node ids as in ComfyUI's own script examples, extras numbered on)."""
    graph: dict[str, dict[str, Any]] = {
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt_name}},
    }
    model, clip, vae = _loaders(graph, request)
    graph["6"] = _encode(request.prompt, clip)
    graph["7"] = _encode(request.negative_prompt, clip)
    latent, denoise = _start_latent(graph, request, vae, image_name)
    sampler = {
        "seed": seed,
        "steps": request.steps or DEFAULTS["steps"],
        "cfg": request.cfg_scale if request.cfg_scale is not None else DEFAULTS["cfg"],
        "sampler_name": SAMPLERS.get(request.sampler or "Euler", "euler"),
        "scheduler": SCHEDULERS.get((request.scheduler or "automatic").lower(), "normal"),
        "denoise": denoise,
        "model": model,
        "positive": ["6", 0],
        "negative": ["7", 0],
        "latent_image": latent,
    }
    graph[FIRST_PASS] = {"class_type": "KSampler", "inputs": sampler}
    samples = [FIRST_PASS, 0]
    if request.hires is not None and hires_applies(request):
        samples = _hires_pass(graph, request.hires, sampler, clip, samples)
    graph["8"] = {"class_type": "VAEDecode", "inputs": {"samples": samples, "vae": vae}}
    graph["9"] = {"class_type": "SaveImage", "inputs": {"filename_prefix": "sdgate", "images": ["8", 0]}}
    return graph


def _encode(text: str, clip: list[Any]) -> dict[str, Any]:
    return {"class_type": "CLIPTextEncode", "inputs": {"text": text, "clip": clip}}


def _loaders(graph: dict[str, dict[str, Any]], request: ImageRequest) -> tuple[list[Any], ...]:
    """Checkpoint -> LoRA chain -> CLIP skip, and the VAE: the (model, clip, vae) links to use."""
    model: list[Any] = ["4", 0]
    clip: list[Any] = ["4", 1]
    vae: list[Any] = ["4", 2]
    for i, lora in enumerate(request.loras):
        node = str(LORA_NODE_BASE + i)
        graph[node] = {"class_type": "LoraLoader", "inputs": _lora_inputs(lora, model, clip)}
        model, clip = [node, 0], [node, 1]
    if request.clip_skip is not None and request.clip_skip > 1:
        graph["15"] = {
            "class_type": "CLIPSetLastLayer",
            "inputs": {"clip": clip, "stop_at_clip_layer": -request.clip_skip},
        }
        clip = ["15", 0]
    if request.vae is not None and request.vae.strip().lower() not in VAE_OF_CHECKPOINT:
        graph["16"] = {"class_type": "VAELoader", "inputs": {"vae_name": model_file(request.vae)}}
        vae = ["16", 0]
    return model, clip, vae


def _lora_inputs(lora: Lora, model: list[Any], clip: list[Any]) -> dict[str, Any]:
    return {
        "model": model,
        "clip": clip,
        "lora_name": model_file(lora.name),
        "strength_model": lora.unet_weight if lora.unet_weight is not None else lora.weight,
        "strength_clip": lora.weight,
    }


def _start_latent(
    graph: dict[str, dict[str, Any]], request: ImageRequest, vae: list[Any], image_name: str | None
) -> tuple[list[Any], float]:
    """The first KSampler's ``latent_image`` link and its ``denoise``."""
    if request.mode == "txt2img":
        graph["5"] = {
            "class_type": "EmptyLatentImage",
            "inputs": {
                "width": request.width or DEFAULTS["width"],
                "height": request.height or DEFAULTS["height"],
                "batch_size": request.batch_size,
            },
        }
        return ["5", 0], 1.0
    assert image_name is not None
    graph["10"] = {"class_type": "LoadImage", "inputs": {"image": image_name}}
    if request.mode == "img2img":
        graph["11"] = {"class_type": "VAEEncode", "inputs": {"pixels": ["10", 0], "vae": vae}}
        default = 0.75
    else:
        graph["11"] = {
            "class_type": "VAEEncodeForInpaint",
            "inputs": {"pixels": ["10", 0], "vae": vae, "mask": ["10", 1], "grow_mask_by": 6},
        }
        default = 1.0
    latent: list[Any] = ["11", 0]
    if request.batch_size > 1:
        graph["12"] = {
            "class_type": "RepeatLatentBatch",
            "inputs": {"samples": latent, "amount": request.batch_size},
        }
        latent = ["12", 0]
    return latent, request.denoising_strength if request.denoising_strength is not None else default


def _hires_pass(
    graph: dict[str, dict[str, Any]],
    hires: Hires,
    first: dict[str, Any],
    clip: list[Any],
    samples: list[Any],
) -> list[Any]:
    """Upscale the first pass's latents (node 13) and sample them again (node 14), as A1111's
    latent hires fix does; returns the link to the final latents."""
    method = latent_upscale_method(hires)
    if hires.resize_x or hires.resize_y:  # 0 keeps the aspect ratio; both given: A1111 crops the middle
        both = bool(hires.resize_x and hires.resize_y)
        graph["13"] = {
            "class_type": "LatentUpscale",
            "inputs": {
                "samples": samples,
                "upscale_method": method,
                "width": hires.resize_x,
                "height": hires.resize_y,
                "crop": "center" if both else "disabled",
            },
        }
    else:
        graph["13"] = {
            "class_type": "LatentUpscaleBy",
            "inputs": {"samples": samples, "upscale_method": method, "scale_by": hires.scale},
        }
    positive, negative = first["positive"], first["negative"]
    if hires.prompt:
        graph["17"] = _encode(hires.prompt, clip)
        positive = ["17", 0]
    if hires.negative_prompt:
        graph["18"] = _encode(hires.negative_prompt, clip)
        negative = ["18", 0]
    graph[HIRES_PASS] = {
        "class_type": "KSampler",
        "inputs": {
            **first,
            "steps": hires.second_pass_steps or first["steps"],
            "sampler_name": SAMPLERS.get(hires.sampler or "", first["sampler_name"]),
            "scheduler": SCHEDULERS.get((hires.scheduler or "").lower(), first["scheduler"]),
            "denoise": hires.denoising_strength,
            "positive": positive,
            "negative": negative,
            "latent_image": ["13", 0],
        },
    }
    return [HIRES_PASS, 0]


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
