"""OpenAI-compatible images (``/v1/images/generations``, ``/v1/images/edits``): OpenAI, LocalAI,
sdgate's own OpenAI dialect. The API has no negative prompt, steps, guidance, sampler or seed."""

from __future__ import annotations

import base64
from typing import Any, ClassVar

from sdgate.client._exceptions import APIResponseError
from sdgate.client._ops import Call
from sdgate.client._types import ImageRequest, Model
from sdgate.client.backends._base import Backend, Context, Gen, result_from_images, without_a1111_extras
from sdgate.client.backends._images import repaint_as_transparency


def size_of(request: ImageRequest) -> str | None:
    if request.width is None and request.height is None:
        return None
    return f"{request.width or request.height}x{request.height or request.width}"


class OpenAIBackend(Backend):
    kind: ClassVar[str] = "openai"
    modes: ClassVar[frozenset[str]] = frozenset({"txt2img", "inpaint"})
    unsupported: ClassVar[dict[str, str]] = {
        "negative_prompt": "the OpenAI images API has no negative prompt",
        "steps": "not an OpenAI images parameter",
        "cfg_scale": "not an OpenAI images parameter",
        "sampler": "not an OpenAI images parameter",
        "scheduler": "not an OpenAI images parameter",
        "seed": "OpenAI images cannot be seeded",
        "denoising_strength": "edits have no strength",
        "priority": "no queue priority",
        "metadata": "no job metadata",
        "callback_url": "no webhooks: only sdgate's job API calls back",
        **without_a1111_extras("the OpenAI images API"),
    }
    strip_suffixes: ClassVar[tuple[str, ...]] = ("/v1/images", "/v1")

    def generate(self, request: ImageRequest, ctx: Context) -> Gen:
        fields: dict[str, Any] = {
            "prompt": request.prompt,
            "n": request.batch_size,
            "response_format": "b64_json",
        }
        if (model := request.model or self.model) is not None:
            fields["model"] = model
        if (size := size_of(request)) is not None:
            fields["size"] = size
        if request.mode == "txt2img":
            resp = yield Call("POST", self.url("/v1/images/generations"), json=fields, long=True)
        else:
            assert request.init_image is not None and request.mask is not None
            image = repaint_as_transparency(request.init_image, request.mask)
            data = {k: str(v) for k, v in fields.items()}
            resp = yield Call(
                "POST",
                self.url("/v1/images/edits"),
                data=data,
                files=[("image", ("image.png", image, "image/png"))],
                long=True,
            )
        data = resp.json()
        rows = data.get("data") if isinstance(data, dict) else None
        if not isinstance(rows, list):
            raise APIResponseError("images: expected {data: [...]}")
        blobs: list[bytes] = []
        for row in rows:
            if row.get("b64_json"):
                blobs.append(base64.b64decode(row["b64_json"]))
            elif row.get("url"):
                fetched = yield Call("GET", row["url"])
                blobs.append(fetched.content)
            else:
                raise APIResponseError("images: an item has neither b64_json nor url")
        return result_from_images(blobs, [None] * len(blobs), backend=self.kind, where="images")

    def list_models(self) -> Gen:
        resp = yield Call("GET", self.url("/v1/models"))
        return [
            Model(name=str(r.get("id")), title=str(r.get("id")), raw=r) for r in resp.json().get("data", [])
        ]
