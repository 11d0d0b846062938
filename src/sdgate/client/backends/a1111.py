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
from sdgate.client._types import ImageRequest, Model, ProgressEvent
from sdgate.client.backends._base import Backend, Context, Gen, b64encode, poll_delays, result_from_images

PREFIX = "/sdapi/v1"


def request_body(request: ImageRequest, default_model: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "prompt": request.prompt,
        "negative_prompt": request.negative_prompt,
        "seed": -1 if request.seed is None else request.seed,
        "batch_size": request.batch_size,
        "n_iter": 1,
    }
    for ours, theirs in (
        ("width", "width"),
        ("height", "height"),
        ("steps", "steps"),
        ("cfg_scale", "cfg_scale"),
        ("sampler", "sampler_name"),
        ("scheduler", "scheduler"),
        ("denoising_strength", "denoising_strength"),
    ):
        value = getattr(request, ours)
        if value is not None:
            body[theirs] = value
    model = request.model or default_model
    if model:
        body["override_settings"] = {"sd_model_checkpoint": model}
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
    }
    strip_suffixes: ClassVar[tuple[str, ...]] = (PREFIX,)

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
