"""Seed resize, tiling and the sampler options through /sdapi/v1/txt2img on the real engine."""

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
from tests.engine.test_tiling import seam_ratio
from tests.server.real_engine import real_engine_client

BASE = {"override_settings": {"sd_model_checkpoint": "tiny-sd15"}, "width": 64, "height": 64, "steps": 3}
URL = "/sdapi/v1/txt2img"


@pytest.fixture(scope="module")
def models(tiny_models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("sampling-models")
    (root / "Stable-diffusion").symlink_to(tiny_models_dir / "Stable-diffusion")
    make_lora(root / "Lora" / "ink.safetensors", "kohya", 1)
    return root


@pytest.fixture
async def client(models: Path, tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    async with real_engine_client(models, tmp_path / "data") as c:
        yield c


async def txt2img(client: httpx.AsyncClient, **fields: object) -> dict:
    r = await client.post(URL, json={**BASE, "seed": 3, **fields})
    assert r.status_code == 200, r.text
    return r.json()


def picture(body: dict) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(body["images"][0]))))


def infotext(body: dict) -> str:
    return json.loads(body["info"])["infotexts"][0]  # type: ignore[no-any-return]


async def test_seed_resize_through_the_api(client: httpx.AsyncClient) -> None:
    plain = await txt2img(client)
    for off in ({}, {"seed_resize_from_w": -1, "seed_resize_from_h": -1}, {"seed_resize_from_w": 0}):
        same = await txt2img(client, **off)
        assert np.array_equal(picture(plain), picture(same)) and "Seed resize" not in infotext(same)
    resized = await txt2img(client, seed_resize_from_w=32, seed_resize_from_h=48)
    assert not np.array_equal(picture(plain), picture(resized))
    assert "Seed resize from: 32x48, " in infotext(resized)
    info = json.loads(resized["info"])
    assert (info["seed_resize_from_w"], info["seed_resize_from_h"]) == (32, 48)
    r = await client.post("/sdapi/v1/png-info", json={"image": resized["images"][0]})
    params = r.json()["parameters"]
    assert (params["Seed resize from-1"], params["Seed resize from-2"]) == ("32", "48")


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"seed_resize_from_w": 33, "seed_resize_from_h": 64}, "seed_resize_from_w"),
        ({"seed_resize_from_w": 64, "seed_resize_from_h": -8}, "seed_resize_from_h"),
        ({"seed_resize_from_w": 64, "seed_resize_from_h": 10**6}, "seed_resize_from_h"),
    ],
)
async def test_bad_seed_resize_is_a_4xx_naming_the_field(
    client: httpx.AsyncClient, payload: dict, field: str
) -> None:
    r = await client.post(URL, json={**BASE, **payload})
    if r.status_code == 422:  # out of the schema's range: FastAPI's body naming the field
        assert r.json()["detail"][0]["loc"] == ["body", field], r.text
        return
    assert r.status_code == 400, r.text  # not a multiple of the model's VAE factor
    assert r.json()["detail"].startswith(f"{field}:"), r.json()


async def test_tiling_through_the_api(client: httpx.AsyncClient) -> None:
    before = await txt2img(client, tiling=False)
    tiled = await txt2img(client, tiling=True)
    after = await txt2img(client)
    assert "Tiling: True" in infotext(tiled) and "Tiling" not in infotext(before)
    assert seam_ratio(picture(tiled)) < min(1.0, seam_ratio(picture(before)))
    assert np.array_equal(picture(before), picture(after))  # the switch went back


async def test_sampler_options_through_the_api(client: httpx.AsyncClient) -> None:
    plain = await txt2img(client, sampler_name="Euler")
    churned = await txt2img(client, sampler_name="Euler", s_churn=2, s_tmin=0.5, s_noise=0.9)
    assert not np.array_equal(picture(plain), picture(churned))
    assert "Sigma churn: 2, Sigma tmin: 0.5, Sigma noise: 0.9, " in infotext(churned)
    ddim = await txt2img(client, sampler_name="DDIM", eta=0.5)
    assert "Eta DDIM: 0.5, " in infotext(ddim)
    euler_a = await txt2img(client, sampler_name="Euler a", eta=0.25)
    assert "Eta: 0.25, " in infotext(euler_a)
    heun = await txt2img(client, sampler_name="Heun", s_churn=1)
    assert "Sigma churn: 1, " in infotext(heun) and "Sampler note" not in infotext(heun)
    fast = await txt2img(client, sampler_name="DPM fast", s_noise=0.5)  # one A1111 has, we lack
    assert "s_noise 0.5 is not supported for DPM fast" in infotext(fast)
    assert "Sigma noise" not in infotext(fast)


async def test_lora_hashes_through_the_api(client: httpx.AsyncClient) -> None:
    body = await txt2img(client, prompt="a red circle <lora:ink:0.7>")
    text = infotext(body)
    assert 'Lora hashes: "ink: ' in text
    r = await client.post("/sdapi/v1/png-info", json={"image": body["images"][0]})
    value = r.json()["parameters"]["Lora hashes"]
    name, digest = value.split(": ")
    assert name == "ink" and len(digest) == 12 and int(digest, 16) >= 0
