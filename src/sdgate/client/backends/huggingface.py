"""Hugging Face Inference text-to-image: ``POST .../models/{id}`` -> raw image bytes.

One image per call: ``batch_size`` N makes N calls (seeds seed, seed+1, ... when a seed is set).
"""

from __future__ import annotations

from typing import Any, ClassVar
from urllib.parse import urlsplit

from sdgate.client._exceptions import ConfigurationError
from sdgate.client._ops import Call
from sdgate.client._types import ImageRequest, Model
from sdgate.client.backends._base import Backend, Context, Gen, result_from_images, without_a1111_extras


def parameters(request: ImageRequest, seed: int | None) -> dict[str, Any]:
    params: dict[str, Any] = {
        "negative_prompt": request.negative_prompt or None,
        "height": request.height,
        "width": request.width,
        "num_inference_steps": request.steps,
        "guidance_scale": request.cfg_scale,
        "seed": seed,
    }
    return {k: v for k, v in params.items() if v is not None}


class HuggingFaceBackend(Backend):
    kind: ClassVar[str] = "hf"
    modes: ClassVar[frozenset[str]] = frozenset({"txt2img"})
    unsupported: ClassVar[dict[str, str]] = {
        "sampler": "HF takes a diffusers scheduler class name, not an A1111 sampler",
        "scheduler": "HF takes a diffusers scheduler class name, not an A1111 schedule",
        "priority": "no queue priority",
        "metadata": "no job metadata",
        "callback_url": "no webhooks: only sdgate's job API calls back",
        **without_a1111_extras("the HF inference API"),
    }

    def endpoint(self, request: ImageRequest) -> str:
        if "/models/" in urlsplit(self.base_url).path + "/":
            return self.base_url
        model = request.model or self.model
        if not model:
            raise ConfigurationError("the hf backend needs a model id (model=...) or a .../models/<id> URL")
        return self.url(f"/models/{model}")

    def generate(self, request: ImageRequest, ctx: Context) -> Gen:
        url = self.endpoint(request)
        blobs: list[bytes] = []
        seeds: list[int | None] = []
        for i in range(request.batch_size):
            seed = None if request.seed is None else request.seed + i
            body = {"inputs": request.prompt, "parameters": parameters(request, seed)}
            resp = yield Call("POST", url, json=body, headers={"Accept": "image/png"}, long=True)
            blobs.append(resp.content)
            seeds.append(seed)
        return result_from_images(blobs, seeds, backend=self.kind, where="hf")

    def list_models(self) -> Gen:
        model = self.model or urlsplit(self.base_url).path.partition("/models/")[2]
        return [Model(name=model, title=model)] if model else []
        yield  # pragma: no cover
