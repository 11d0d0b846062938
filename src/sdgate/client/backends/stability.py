"""Stability REST: v1 (``/v1/generation/{engine}/...``) and v2beta (``/v2beta/stable-image/generate``)."""

from __future__ import annotations

import base64
from typing import Any, ClassVar

from sdgate.client._exceptions import APIResponseError, JobFailedError, UnsupportedFeatureError
from sdgate.client._ops import Call
from sdgate.client._types import ImageRequest, Model
from sdgate.client.backends._base import Backend, Context, Gen, result_from_images, without_a1111_extras
from sdgate.client.backends._images import nearest_aspect_ratio

DEFAULT_ENGINE = "stable-diffusion-v1-6"
DEFAULT_V2_SERVICE = "core"
SAMPLERS = {  # A1111 name -> Stability v1 enum
    "Euler": "K_EULER",
    "Euler a": "K_EULER_ANCESTRAL",
    "DPM++ 2M": "K_DPMPP_2M",
    "DPM++ 2S a": "K_DPMPP_2S_ANCESTRAL",
    "DPM2": "K_DPM_2",
    "DPM2 a": "K_DPM_2_ANCESTRAL",
    "Heun": "K_HEUN",
    "LMS": "K_LMS",
    "DDIM": "DDIM",
    "DDPM": "DDPM",
}


def text_prompts(request: ImageRequest) -> list[dict[str, Any]]:
    prompts: list[dict[str, Any]] = [{"text": request.prompt, "weight": 1.0}]
    if request.negative_prompt:
        prompts.append({"text": request.negative_prompt, "weight": -1.0})
    return prompts


def v1_fields(request: ImageRequest) -> dict[str, Any]:
    fields: dict[str, Any] = {"samples": request.batch_size, "seed": request.seed or 0}
    if request.cfg_scale is not None:
        fields["cfg_scale"] = request.cfg_scale
    if request.steps is not None:
        fields["steps"] = request.steps
    if request.sampler is not None and request.sampler in SAMPLERS:
        fields["sampler"] = SAMPLERS[request.sampler]
    return fields


def flatten_form(fields: dict[str, Any], prompts: list[dict[str, Any]]) -> dict[str, str]:
    form = {k: str(v) for k, v in fields.items()}
    for i, p in enumerate(prompts):
        form[f"text_prompts[{i}][text]"] = p["text"]
        form[f"text_prompts[{i}][weight]"] = str(p["weight"])
    return form


def _artifacts(resp: Any) -> tuple[list[bytes], list[int | None], list[bool]]:
    data = resp.json()
    rows = data.get("artifacts") if isinstance(data, dict) else data
    if not isinstance(rows, list):
        raise APIResponseError("generation: expected {artifacts: [...]}")
    blobs, seeds, filtered = [], [], []
    for row in rows:
        if row.get("finishReason") == "ERROR":
            raise JobFailedError("the Stability generation failed (finishReason ERROR)", code="error")
        blobs.append(base64.b64decode(row["base64"]))
        seeds.append(row.get("seed"))
        filtered.append(row.get("finishReason") == "CONTENT_FILTERED")
    return blobs, seeds, filtered


class StabilityBackend(Backend):
    """v1: txt2img (JSON), img2img and masking (multipart); ``model`` is the engine id."""

    kind: ClassVar[str] = "stability"
    modes: ClassVar[frozenset[str]] = frozenset({"txt2img", "img2img", "inpaint"})
    unsupported: ClassVar[dict[str, str]] = {
        "scheduler": "Stability v1 has no schedule choice",
        "priority": "no queue priority",
        "metadata": "no job metadata",
        "callback_url": "no webhooks: only sdgate's job API calls back",
        **without_a1111_extras("Stability v1"),
    }
    strip_suffixes: ClassVar[tuple[str, ...]] = ("/v1",)

    def ignored_fields(self, request: ImageRequest) -> tuple[str, ...]:
        ignored = list(super().ignored_fields(request))
        if request.sampler is not None and request.sampler not in SAMPLERS:
            ignored.append("sampler")
        return tuple(ignored)

    def generate(self, request: ImageRequest, ctx: Context) -> Gen:
        engine = request.model or self.model or DEFAULT_ENGINE
        base = f"/v1/generation/{engine}"
        headers = {"Accept": "application/json"}
        fields = v1_fields(request)
        if request.mode == "txt2img":
            body = {**fields, "text_prompts": text_prompts(request)}
            if request.width is not None:
                body["width"] = request.width
            if request.height is not None:
                body["height"] = request.height
            resp = yield Call(
                "POST", self.url(f"{base}/text-to-image"), json=body, headers=headers, long=True
            )
        else:
            assert request.init_image is not None
            form = flatten_form(fields, text_prompts(request))
            files = [("init_image", ("init.png", request.init_image, "image/png"))]
            if request.mode == "img2img":
                form["init_image_mode"] = "IMAGE_STRENGTH"
                form["image_strength"] = str(1.0 - (request.denoising_strength or 0.65))
                path = f"{base}/image-to-image"
            else:
                assert request.mask is not None
                form["mask_source"] = "MASK_IMAGE_WHITE"
                files.append(("mask_image", ("mask.png", request.mask, "image/png")))
                path = f"{base}/image-to-image/masking"
            resp = yield Call("POST", self.url(path), data=form, files=files, headers=headers, long=True)
        blobs, seeds, filtered = _artifacts(resp)
        return result_from_images(blobs, seeds, backend=self.kind, where="stability", filtered=filtered)

    def list_models(self) -> Gen:
        resp = yield Call("GET", self.url("/v1/engines/list"))
        return [Model(name=str(r.get("id")), title=str(r.get("name", "")), raw=r) for r in resp.json()]


class StabilityV2Backend(Backend):
    """v2beta Stable Image (``core`` by default; ``model`` may name ``ultra``, ``core`` or an sd3 model).

    One image per call: ``batch_size`` N makes N calls. Size becomes the nearest aspect ratio.
    """

    kind: ClassVar[str] = "stability-v2beta"
    modes: ClassVar[frozenset[str]] = frozenset({"txt2img", "img2img"})
    unsupported: ClassVar[dict[str, str]] = {
        "steps": "v2beta chooses the steps",
        "sampler": "v2beta chooses the sampler",
        "scheduler": "v2beta chooses the schedule",
        "width": "v2beta takes an aspect ratio: the nearest one is sent",
        "height": "v2beta takes an aspect ratio: the nearest one is sent",
        "priority": "no queue priority",
        "metadata": "no job metadata",
        "callback_url": "no webhooks: only sdgate's job API calls back",
        **without_a1111_extras("Stability v2beta"),
    }
    strip_suffixes: ClassVar[tuple[str, ...]] = ("/v2beta/stable-image/generate", "/v2beta")

    def _service(self, request: ImageRequest) -> tuple[str, str | None]:
        model = request.model or self.model or DEFAULT_V2_SERVICE
        if model in ("core", "ultra", "sd3"):
            return model, None
        return "sd3", model

    def check(self, request: ImageRequest, *, strict: bool = False) -> tuple[str, ...]:
        if request.mode == "img2img" and self._service(request)[0] == "core":
            raise UnsupportedFeatureError(
                "Stability's v2beta core service cannot do img2img: use model='ultra' or an sd3 model",
                backend=self.kind,
            )
        return super().check(request, strict=strict)

    def ignored_fields(self, request: ImageRequest) -> tuple[str, ...]:
        ignored = list(super().ignored_fields(request))
        if request.cfg_scale is not None and self._service(request)[0] != "sd3":
            ignored.append("cfg_scale")
        return tuple(ignored)

    def generate(self, request: ImageRequest, ctx: Context) -> Gen:
        service, sd3_model = self._service(request)
        blobs: list[bytes] = []
        seeds: list[int | None] = []
        filtered: list[bool] = []
        for i in range(request.batch_size):
            form: dict[str, str] = {"prompt": request.prompt, "output_format": "png"}
            if request.negative_prompt:
                form["negative_prompt"] = request.negative_prompt
            if request.seed is not None:
                form["seed"] = str(request.seed + i)
            if sd3_model:
                form["model"] = sd3_model
            if service == "sd3" and request.cfg_scale is not None:
                form["cfg_scale"] = str(request.cfg_scale)
            files: list[tuple[str, tuple[str, bytes, str]]] = [("none", ("", b"", "text/plain"))]
            if request.init_image is not None:
                files = [("image", ("init.png", request.init_image, "image/png"))]
                form["strength"] = str(
                    request.denoising_strength if request.denoising_strength is not None else 0.65
                )
                if service == "sd3":
                    form["mode"] = "image-to-image"
            elif (ratio := nearest_aspect_ratio(request.width, request.height)) is not None:
                form["aspect_ratio"] = ratio
            resp = yield Call(
                "POST",
                self.url(f"/v2beta/stable-image/generate/{service}"),
                data=form,
                files=files,
                headers={"Accept": "application/json"},
                long=True,
            )
            data = resp.json()
            if data.get("finish_reason") == "ERROR":
                raise JobFailedError("the Stability generation failed (finish_reason ERROR)", code="error")
            blobs.append(base64.b64decode(data["image"]))
            seeds.append(data.get("seed"))
            filtered.append(data.get("finish_reason") == "CONTENT_FILTERED")
        return result_from_images(blobs, seeds, backend=self.kind, where="stability", filtered=filtered)
