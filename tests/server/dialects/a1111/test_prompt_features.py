"""AND, textual-inversion embeddings and SDXL emphasis through /sdapi/v1 on the real engine."""

from __future__ import annotations

import base64
import hashlib
import io
import json
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.engine.test_embeddings import write_embeddings
from tests.server.real_engine import real_engine_client

BASE = {"width": 64, "height": 64, "steps": 3, "seed": 5}


@pytest.fixture(scope="module")
def models(tiny_models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("prompt-models")
    (root / "Stable-diffusion").symlink_to(tiny_models_dir / "Stable-diffusion")
    write_embeddings(root / "embeddings", root / "PWNED")
    return root


@pytest.fixture
async def client(models: Path, tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    async with real_engine_client(models, tmp_path / "data") as c:
        yield c


async def txt2img(client: httpx.AsyncClient, model: str = "tiny-sd15", **fields: object) -> dict:
    body = {**BASE, "override_settings": {"sd_model_checkpoint": model}, **fields}
    r = await client.post("/sdapi/v1/txt2img", json=body)
    assert r.status_code == 200, r.text
    return r.json()


def pixels(body: dict) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(body["images"][0]))))


async def use_model(client: httpx.AsyncClient, name: str) -> None:
    assert (await client.post("/sdapi/v1/options", json={"sd_model_checkpoint": name})).status_code == 200


async def test_embeddings_are_loaded_or_skipped_for_the_current_model(client: httpx.AsyncClient) -> None:
    await use_model(client, "tiny-sd15")
    body = (await client.get("/sdapi/v1/embeddings")).json()
    assert set(body["loaded"]) == {"mystyle", "shiny", "learned", "three"}
    assert body["loaded"]["mystyle"] == {
        "step": 500,
        "sd_checkpoint": "0123456789",
        "sd_checkpoint_name": "tiny-sd15",
        "shape": 32,
        "vectors": 2,
    }
    assert body["skipped"]["narrow"]["shape"] == 16
    assert body["skipped"]["xlthing"]["shape"] == 64  # clip_l + clip_g, as A1111 counts it
    assert body["skipped"]["garbage"]["shape"] is None  # unreadable files are listed, not fatal
    await use_model(client, "tiny-sdxl")
    body = (await client.get("/sdapi/v1/embeddings")).json()
    assert set(body["loaded"]) == {"xlthing"} and "mystyle" in body["skipped"]
    assert (await client.post("/sdapi/v1/refresh-embeddings")).json() is None


async def test_and_and_embeddings_in_txt2img(client: httpx.AsyncClient, models: Path) -> None:
    plain = await txt2img(client, prompt="a red circle")
    both = await txt2img(
        client, prompt="a red circle AND a blue square :0.7", negative_prompt="ugly AND dull"
    )
    assert not np.array_equal(pixels(plain), pixels(both))
    ti = await txt2img(client, prompt="a mystyle circle")
    sha = hashlib.sha256((models / "embeddings" / "mystyle.pt").read_bytes()).hexdigest()[:12]
    assert f'TI hashes: "mystyle: {sha}"' in json.loads(ti["info"])["infotexts"][0]
    assert not (models / "PWNED").exists()


@pytest.mark.slow
async def test_sdxl_emphasis_and_and(client: httpx.AsyncClient) -> None:
    plain = pixels(await txt2img(client, "tiny-sdxl", prompt="a red circle"))
    assert not np.array_equal(plain, pixels(await txt2img(client, "tiny-sdxl", prompt="a (red:1.5) circle")))
    assert not np.array_equal(
        plain, pixels(await txt2img(client, "tiny-sdxl", prompt="a red circle AND a dog"))
    )
