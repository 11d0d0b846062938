"""Hires fix, LoRA, prompt editing and variation seeds through /sdapi/v1 on the real engine."""

from __future__ import annotations

import base64
import io
import json
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.engine.test_lora import make_lora
from tests.server.real_engine import real_engine_client

BASE = {"override_settings": {"sd_model_checkpoint": "tiny-sd15"}, "width": 64, "height": 64, "steps": 3}


@pytest.fixture(scope="module")
def models(tiny_models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("route-models")
    (root / "Stable-diffusion").symlink_to(tiny_models_dir / "Stable-diffusion")
    make_lora(root / "Lora" / "ink.safetensors", "kohya", 1)
    return root


@pytest.fixture
async def client(models: Path, tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    async with real_engine_client(models, tmp_path / "data") as c:
        yield c


async def txt2img(client: httpx.AsyncClient, **fields: object) -> dict:
    r = await client.post("/sdapi/v1/txt2img", json={**BASE, "seed": 3, **fields})
    assert r.status_code == 200, r.text
    return r.json()


def image(body: dict, i: int = 0) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(body["images"][i])))


async def test_hires_through_the_api(client: httpx.AsyncClient) -> None:
    body = await txt2img(client, enable_hr=True, hr_scale=2, hr_second_pass_steps=2, denoising_strength=0.6)
    assert image(body).size == (128, 128)
    info = json.loads(body["info"])
    assert (info["width"], info["height"]) == (64, 64)  # A1111 reports the first pass's size
    r = await client.post("/sdapi/v1/png-info", json={"image": body["images"][0]})
    params = r.json()["parameters"]
    assert params["Denoising strength"] == "0.6" and params["Hires upscale"] == "2"
    assert params["Hires upscaler"] == "Latent" and params["Size-1"] == "64"
    # A null denoising_strength means 0.7 (A1111 would fail with a 500).
    default = await txt2img(client, enable_hr=True, hr_resize_x=96, hr_upscaler="Lanczos")
    assert image(default).size == (96, 96)
    assert "Denoising strength: 0.7" in json.loads(default["info"])["infotexts"][0]


async def test_lora_prompt_editing_and_variation_seed_through_the_api(client: httpx.AsyncClient) -> None:
    base = np.asarray(image(await txt2img(client, prompt="a red circle")))
    for prompt in ("a red circle <lora:ink:0.8>", "a [red:blue:1] circle", "a (red:1.5) circle"):
        assert not np.array_equal(base, np.asarray(image(await txt2img(client, prompt=prompt)))), prompt
    zero = np.asarray(image(await txt2img(client, prompt="a red circle <lora:ink:0>")))
    assert np.array_equal(base, zero)
    varied = await txt2img(client, prompt="a red circle", subseed=11, subseed_strength=0.0)
    assert np.array_equal(base, np.asarray(image(varied)))
    full = await txt2img(client, prompt="a red circle", subseed=11, subseed_strength=1.0)
    plain = await txt2img(client, prompt="a red circle", seed=11)
    a, b = np.asarray(image(full)).astype(int), np.asarray(image(plain)).astype(int)
    assert np.abs(a - b).max() <= 1
    info = json.loads(full["info"])
    assert info["all_seeds"] == [3] and info["all_subseeds"] == [11]
