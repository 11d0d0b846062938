"""One table: the same request spoken in each dialect becomes the same ``GenerationRequest``.

Columns are the dialects' pure translate functions (no server); a dialect that cannot say a
request (HF has no batch or init image) is left out of that row. ComfyUI's column is a graph, not a
``GenerationRequest``: it is compared by the pixels it draws (slow, on a tiny model).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from sdgate.core.engine import ModelDefaults
from sdgate.core.requests import GenerationRequest
from sdgate.server.dialects.a1111 import translate as a1111
from sdgate.server.dialects.a1111.protocol import Img2ImgRequest, Txt2ImgRequest
from sdgate.server.dialects.hf import translate as hf
from sdgate.server.dialects.hf.protocol import TextToImageRequest as HfRequest
from sdgate.server.dialects.native import translate as native
from sdgate.server.dialects.native.protocol import JobCreate
from sdgate.server.dialects.openai import translate as openai
from sdgate.server.dialects.openai.protocol import ImageEditParams, ImageGenerationRequest
from sdgate.server.dialects.stability import translate as stability
from sdgate.server.dialects.stability.protocol import (
    ImageToImageParams,
    MaskingParams,
    TextToImageRequest,
)
from sdgate.settings import Settings

DEFAULTS = ModelDefaults(name="m", width=512, height=512, steps=20, vae_scale_factor=8)
FIELDS = (
    "mode",
    "prompt",
    "negative_prompt",
    "width",
    "height",
    "steps",
    "cfg_scale",
    "seed",
    "sampler",
    "scheduler",
    "batch_size",
    "denoising_strength",
    "init_images",
    "mask",
    "inpainting_mask_invert",
)
INIT, MASK = "img_" + "1" * 24, "img_" + "2" * 24

Translate = Callable[[Settings], GenerationRequest]


def stability_prompts(batch: int = 1, **extra: Any) -> dict[str, Any]:
    return {
        "text_prompts": [{"text": "a red fox", "weight": 1}, {"text": "blurry", "weight": -1}],
        "steps": 25,
        "cfg_scale": 6.5,
        "seed": 1234,
        "sampler": "K_EULER_ANCESTRAL",
        "samples": batch,
        **extra,
    }


def common() -> dict[str, Any]:
    return {"prompt": "a red fox", "negative_prompt": "blurry", "steps": 25, "cfg_scale": 6.5, "seed": 1234}


def txt2img_row(batch: int) -> dict[str, Translate]:
    kw = {"model": "m", "defaults": DEFAULTS}
    row: dict[str, Translate] = {
        "a1111": lambda s: a1111.txt2img_request(
            Txt2ImgRequest(**common(), width=512, height=640, sampler_name="Euler a", batch_size=batch),
            settings=s,
            **kw,
        ),
        "native": lambda s: native.generation_request(
            JobCreate(**common(), width=512, height=640, sampler="Euler a", batch_size=batch),
            settings=s,
            **kw,
        ),
        "stability": lambda s: stability.text_to_image_request(
            TextToImageRequest(**stability_prompts(batch), width=512, height=640), settings=s, **kw
        ),
        "openai": lambda s: openai.generation_request(
            ImageGenerationRequest(**common(), size="512x640", n=batch, sampler="Euler a"), settings=s, **kw
        ),
    }
    if batch == 1:
        row["hf"] = lambda s: hf.text_to_image_request(
            HfRequest(
                inputs="a red fox",
                parameters={
                    "negative_prompt": "blurry",
                    "width": 512,
                    "height": 640,
                    "num_inference_steps": 25,
                    "guidance_scale": 6.5,
                    "seed": 1234,
                    "scheduler": "EulerAncestralDiscreteScheduler",
                },
            ),
            settings=s,
            **kw,
        )
    return row


def img2img_row() -> dict[str, Translate]:
    kw = {"model": "m", "defaults": DEFAULTS}
    return {
        "a1111": lambda s: a1111.img2img_request(
            Img2ImgRequest(**common(), sampler_name="Euler a", denoising_strength=0.6, width=512, height=640),
            settings=s,
            init_images=(INIT,),
            mask=None,
            **kw,
        ),
        "native": lambda s: native.generation_request(
            JobCreate(**common(), sampler="Euler a", denoising_strength=0.6, width=512, height=640),
            settings=s,
            init_images=(INIT,),
            **kw,
        ),
        "stability": lambda s: stability.image_to_image_request(
            ImageToImageParams(**stability_prompts(), image_strength=0.4),
            init_image=INIT,
            init_size=(512, 640),
            settings=s,
            **kw,
        ),
        "stability (step schedule)": lambda s: stability.image_to_image_request(
            ImageToImageParams(
                **stability_prompts(), init_image_mode="STEP_SCHEDULE", step_schedule_start=0.6
            ),
            init_image=INIT,
            init_size=(512, 640),
            settings=s,
            **kw,
        ),
        "openai": lambda s: openai.edit_request(
            ImageEditParams(**common(), sampler="Euler a", strength=0.6),
            init_image=INIT,
            mask=None,
            init_size=(512, 640),
            settings=s,
            **kw,
        ),
    }


def inpaint_row() -> dict[str, Translate]:
    """The mask id is already "white = repaint" (each router normalises pixels; tested per dialect)."""
    kw = {"model": "m", "defaults": DEFAULTS}
    return {
        "a1111": lambda s: a1111.img2img_request(
            Img2ImgRequest(**common(), sampler_name="Euler a", denoising_strength=1.0, width=512, height=640),
            settings=s,
            init_images=(INIT,),
            mask=MASK,
            **kw,
        ),
        "native": lambda s: native.generation_request(
            JobCreate(**common(), sampler="Euler a", denoising_strength=1.0, width=512, height=640),
            settings=s,
            init_images=(INIT,),
            mask=MASK,
            **kw,
        ),
        "stability": lambda s: stability.masking_request(
            MaskingParams(**stability_prompts(), mask_source="MASK_IMAGE_BLACK"),
            init_image=INIT,
            mask=MASK,
            init_size=(512, 640),
            settings=s,
            **kw,
        ),
        "openai": lambda s: openai.edit_request(
            ImageEditParams(**common(), sampler="Euler a"),
            init_image=INIT,
            mask=MASK,
            init_size=(512, 640),
            settings=s,
            **kw,
        ),
    }


ROWS = {
    "txt2img": txt2img_row(1),
    "txt2img batch 2": txt2img_row(2),
    "img2img": img2img_row(),
    "inpaint": inpaint_row(),
}
SHARED = {
    "prompt": "a red fox",
    "negative_prompt": "blurry",
    "width": 512,
    "height": 640,
    "steps": 25,
    "cfg_scale": 6.5,
    "seed": 1234,
    "sampler": "Euler a",
    "inpainting_mask_invert": False,
}
EXPECTED: dict[str, dict[str, Any]] = {
    "txt2img": {
        "mode": "txt2img",
        "batch_size": 1,
        "denoising_strength": None,
        "init_images": (),
        "mask": None,
    },
    "txt2img batch 2": {"mode": "txt2img", "batch_size": 2},
    "img2img": {"mode": "img2img", "denoising_strength": 0.6, "init_images": (INIT,), "mask": None},
    "inpaint": {"mode": "inpaint", "denoising_strength": 1.0, "init_images": (INIT,), "mask": MASK},
}


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path)


@pytest.mark.parametrize("row", list(ROWS))
def test_dialects_agree(row: str, settings: Settings) -> None:
    results = {dialect: fn(settings) for dialect, fn in ROWS[row].items()}
    table = {dialect: {f: getattr(req, f) for f in FIELDS} for dialect, req in results.items()}
    reference = next(iter(table.values()))
    for dialect, fields in table.items():
        assert fields == reference, f"{row}: {dialect} differs"
    expected = {**SHARED, **EXPECTED[row]}
    assert {f: reference[f] for f in expected} == expected
    assert len(table) >= 3


# -- the ComfyUI column: a graph is not a GenerationRequest, so it is compared by its pixels ----------


@pytest.mark.slow
async def test_comfyui_draws_what_the_other_dialects_draw(tmp_path: Path, tiny_models_dir: Path) -> None:
    """The txt2img row through the native API, A1111 and a ComfyUI prompt (the standard graph with
    ``euler``/``normal``): one image, pixel for pixel, on the real engine with a tiny model."""
    import asyncio
    import base64
    import io

    import numpy as np
    from PIL import Image

    from tests import comfy_graphs
    from tests.server.real_engine import real_engine_client

    def rgb(data: bytes) -> Any:
        return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))

    shared = {"prompt": "a red fox", "negative_prompt": "blurry", "width": 64, "height": 64, "steps": 4,
              "cfg_scale": 6.5, "seed": 1234}
    async with real_engine_client(tiny_models_dir, tmp_path / "data") as client:
        checkpoint = {"sd_model_checkpoint": "tiny-sd15"}
        a1111_body = {**shared, "sampler_name": "Euler", "scheduler": "Normal",
                      "override_settings": checkpoint}
        r = await client.post("/sdapi/v1/txt2img", json=a1111_body)
        a1111 = rgb(base64.b64decode(r.json()["images"][0]))
        native_body = {**shared, "sampler": "Euler", "scheduler": "normal", "model": "tiny-sd15"}
        job = (await client.post("/api/v1/jobs?wait=30&include=images", json=native_body)).json()
        while job["state"] in ("queued", "running"):
            await asyncio.sleep(0.05)
            job = (await client.get(f"/api/v1/jobs/{job['id']}?include=images")).json()
        found = job.get("images") or job["result"]["images"]
        native = rgb(base64.b64decode(found[0]["data"].split(",", 1)[-1]))
        graph = comfy_graphs.txt2img("tiny-sd15.safetensors", width=64, height=64, steps=4, cfg=6.5,
                                     seed=1234, positive="a red fox", negative="blurry")
        prompt_id = (await client.post("/prompt", json={"prompt": graph})).json()["prompt_id"]
        entry: dict[str, Any] = {}
        for _ in range(1200):
            entry = (await client.get(f"/history/{prompt_id}")).json()
            if entry:
                break
            await asyncio.sleep(0.05)
        image = entry[prompt_id]["outputs"]["9"]["images"][0]
        comfy = rgb((await client.get("/view", params=image)).content)
    assert np.array_equal(native, a1111), "a1111 differs from native"
    assert np.array_equal(native, comfy), "comfy differs from native"
