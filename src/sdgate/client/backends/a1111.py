"""Any AUTOMATIC1111 WebUI (``/sdapi/v1``): one blocking call; progress by polling ``/progress``.

A1111's ``/progress`` describes whatever the server runs now (sdgate: the caller's oldest running
A1111 job), so with several generations in flight at once the steps shown may be another's.
"""

from __future__ import annotations

import base64
import json
from typing import Any, ClassVar

from sdgate.client._exceptions import APIResponseError
from sdgate.client._ops import Call, Emit, Join, Poll, Sleep, Start
from sdgate.client._types import Hires, ImageRequest, Lora, Model, ProgressEvent
from sdgate.client.backends._base import Backend, Context, Gen, b64encode, poll_delays, result_from_images

PREFIX = "/sdapi/v1"


# Request fields A1111 takes under the same name, when set.
_PLAIN_FIELDS = (
    "width",
    "height",
    "steps",
    "cfg_scale",
    "scheduler",
    "denoising_strength",
    "subseed_strength",
    "seed_resize_from_w",
    "seed_resize_from_h",
    "eta",
    "s_churn",
    "s_tmin",
    "s_tmax",
    "s_noise",
)
_IMG2IMG_FIELDS = (
    "resize_mode",
    "image_cfg_scale",
    "mask_blur",
    "inpainting_fill",
    "inpaint_full_res",
    "inpaint_full_res_padding",
    "inpainting_mask_invert",
    "initial_noise_multiplier",
)
# Request fields A1111 reads from ``override_settings``.
_SETTINGS = {
    "vae": "sd_vae",
    "clip_skip": "CLIP_stop_at_last_layers",
    "eta_noise_seed_delta": "eta_noise_seed_delta",
}


def lora_tags(loras: tuple[Lora, ...]) -> str:
    """A1111 applies LoRAs named in the prompt: ``<lora:name:te_weight[:unet_weight]>``."""
    tags = []
    for lora in loras:
        weights = f"{lora.weight:g}"
        if lora.unet_weight is not None and lora.unet_weight != lora.weight:
            weights += f":{lora.unet_weight:g}"
        tags.append(f"<lora:{lora.name}:{weights}>")
    return " ".join(tags)


def hires_fields(hires: Hires) -> dict[str, Any]:
    out: dict[str, Any] = {
        "enable_hr": True,
        "hr_scale": hires.scale,
        "hr_upscaler": hires.upscaler,
        "hr_second_pass_steps": hires.second_pass_steps,
        "hr_resize_x": hires.resize_x,
        "hr_resize_y": hires.resize_y,
        "denoising_strength": hires.denoising_strength,  # in txt2img, the second pass's strength
        "hr_prompt": hires.prompt,
        "hr_negative_prompt": hires.negative_prompt,
    }
    if hires.sampler is not None:
        out["hr_sampler_name"] = hires.sampler
    if hires.scheduler is not None:
        out["hr_scheduler"] = hires.scheduler
    return out


def request_body(request: ImageRequest, default_model: str | None = None) -> dict[str, Any]:
    prompt = request.prompt
    if request.loras:
        prompt = f"{prompt} {lora_tags(request.loras)}".strip()
    body: dict[str, Any] = {
        "prompt": prompt,
        "negative_prompt": request.negative_prompt,
        "seed": -1 if request.seed is None else request.seed,
        "batch_size": request.batch_size,
        "n_iter": request.n_iter,
    }
    if request.sampler is not None:
        body["sampler_name"] = request.sampler
    img2img = request.mode != "txt2img"
    for name in _PLAIN_FIELDS + (_IMG2IMG_FIELDS if img2img else ()):
        value = getattr(request, name)
        if value is not None:
            body[name] = value
    if request.subseed is not None or request.subseed_strength:
        body["subseed"] = -1 if request.subseed is None else request.subseed
    if request.tiling:
        body["tiling"] = True
    if request.styles:
        body["styles"] = list(request.styles)
    if request.hires is not None and not img2img:
        body.update(hires_fields(request.hires))
    settings = {
        theirs: getattr(request, ours)
        for ours, theirs in _SETTINGS.items()
        if getattr(request, ours) is not None
    }
    model = request.model or default_model
    if model:
        settings["sd_model_checkpoint"] = model
    if settings:
        body["override_settings"] = settings
        body["override_settings_restore_afterwards"] = True
    if request.init_image is not None:
        body["init_images"] = [b64encode(request.init_image)]
    if request.mask is not None:
        body["mask"] = b64encode(request.mask)
    return body


def parse_info(info: Any) -> dict[str, Any]:
    if isinstance(info, dict):
        return info
    try:
        data = json.loads(info) if isinstance(info, str) and info else {}
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


class A1111Backend(Backend):
    kind: ClassVar[str] = "a1111"
    modes: ClassVar[frozenset[str]] = frozenset({"txt2img", "img2img", "inpaint"})
    unsupported: ClassVar[dict[str, str]] = {
        "priority": "A1111 runs requests in arrival order",
        "metadata": "A1111 has nowhere to keep it",
        "callback_url": "no webhooks: only sdgate's job API calls back",
        "hires": "A1111 has hires fix in txt2img only",
    }
    strip_suffixes: ClassVar[tuple[str, ...]] = (PREFIX,)

    def ignored_fields(self, request: ImageRequest) -> tuple[str, ...]:
        ignored = super().ignored_fields(request)
        return tuple(name for name in ignored if name != "hires" or request.mode != "txt2img")

    def generate(self, request: ImageRequest, ctx: Context) -> Gen:
        route = "txt2img" if request.mode == "txt2img" else "img2img"
        call = Call("POST", self.url(f"{PREFIX}/{route}"), json=request_body(request, self.model), long=True)
        if not ctx.progress:
            resp = yield call
        else:
            resp = yield from self._with_progress(call, ctx)
        data = resp.json()
        if not isinstance(data, dict) or not isinstance(data.get("images"), list):
            raise APIResponseError(f"{route}: expected {{images: [...]}}")
        info = parse_info(data.get("info"))
        blobs = [base64.b64decode(s.split(",", 1)[-1]) for s in data["images"]]
        # A1111 appends extra images (grids, masks) after the batch; the seeds name the real ones.
        seeds = list(info.get("all_seeds") or [])
        texts = list(info.get("infotexts") or [])
        blobs = blobs[: len(seeds)] if seeds and len(blobs) > len(seeds) else blobs
        seeds = seeds[: len(blobs)] + [None] * max(0, len(blobs) - len(seeds))
        result = result_from_images(blobs, seeds, backend=self.kind, where=route, infotexts=texts)
        if ctx.progress:
            yield Emit(ProgressEvent(kind="succeeded", step=1, total=1))
        return result

    def _with_progress(self, call: Call, ctx: Context) -> Gen:
        task = yield Start(call)
        yield Emit(ProgressEvent(kind="queued"))
        last = (-1, -1)
        for delay in poll_delays(max(ctx.poll_initial, 0.1), ctx.poll_max):
            if (yield Poll(task)):
                break
            resp = yield Call("GET", self.url(f"{PREFIX}/progress"), params={"skip_current_image": "true"})
            data = resp.json()
            state = data.get("state") or {}
            step, total = int(state.get("sampling_step") or 0), int(state.get("sampling_steps") or 0)
            if (step, total) != last and total:
                yield Emit(
                    ProgressEvent(
                        kind="progress", step=step, total=total, eta_s=data.get("eta_relative"), data=data
                    )
                )
                last = (step, total)
            yield Sleep(delay)
        return (yield Join(task))

    def list_models(self) -> Gen:
        resp = yield Call("GET", self.url(f"{PREFIX}/sd-models"))
        return [
            Model(name=str(r.get("model_name")), title=str(r.get("title", "")), raw=r) for r in resp.json()
        ]
