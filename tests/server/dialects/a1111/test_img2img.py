"""``/sdapi/v1/img2img`` on the real engine and tiny models: img2img, inpainting, echo, errors."""

from __future__ import annotations

import base64
import io
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from sdgate.server.app import create_app
from sdgate.settings import Settings


def b64(image: Image.Image, fmt: str = "PNG") -> str:
    buf = io.BytesIO()
    image.save(buf, format=fmt)
    return base64.b64encode(buf.getvalue()).decode()


def decode(value: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(value)))


def noise(width: int, height: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8), "RGB")


@pytest.fixture
async def real(tiny_settings: Callable[..., Settings]) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(tiny_settings())
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://sdgate", timeout=120) as c:
            yield c


def payload(**fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "prompt": "a red circle",
        "steps": 4,
        "width": 64,
        "height": 48,
        "seed": 5,
        "init_images": [b64(noise(40, 40))],
        "override_settings": {"sd_model_checkpoint": "tiny-sd15"},
    }
    body.update(fields)
    return body


async def test_img2img_sizes_seeds_and_echo(real: httpx.AsyncClient) -> None:
    r = await real.post(
        "/sdapi/v1/img2img", json=payload(batch_size=2, resize_mode=1, denoising_strength=0.5)
    )
    assert r.status_code == 200, r.text
    data = r.json()
    assert [decode(v).size for v in data["images"]] == [(64, 48)] * 2
    info = json.loads(data["info"])
    assert info["all_seeds"] == [5, 6] and info["denoising_strength"] == 0.5
    assert "Denoising strength: 0.5" in info["infotexts"][0]
    assert data["parameters"]["init_images"] is None  # include_init_images is off
    echoed = (await real.post("/sdapi/v1/img2img", json=payload(include_init_images=True))).json()
    assert echoed["parameters"]["init_images"] == payload()["init_images"]


async def test_inpaint_keeps_the_unmasked_pixels(real: httpx.AsyncClient) -> None:
    init = noise(64, 48, seed=1)
    mask = Image.new("L", (64, 48), 0)
    mask.paste(255, (16, 8, 48, 40))
    body = payload(
        init_images=[b64(init)],
        mask="data:image/png;base64," + b64(mask),
        mask_blur=0,
        denoising_strength=1.0,
        inpainting_fill=1,
        inpaint_full_res=False,
    )
    r = await real.post("/sdapi/v1/img2img", json=body)
    assert r.status_code == 200, r.text
    got = np.asarray(decode(r.json()["images"][0]).convert("RGB"), dtype=int)
    keep = np.asarray(mask) == 0
    assert np.abs(got - np.asarray(init, dtype=int))[keep].max() <= 2
    assert "Mask blur: 0" in json.loads(r.json()["info"])["infotexts"][0]


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"init_images": []}, "init_images"),
        ({"init_images": ["not an image"]}, "init_images.0"),
        ({"mask": "AAAA"}, "mask"),
        ({"denoising_strength": 2}, "denoising_strength"),
        ({"resize_mode": 7}, "resize_mode"),
        ({"inpainting_fill": 4}, "inpainting_fill"),
        ({"init_images": ["http://127.0.0.1/x.png"]}, "init_images.0"),
    ],
)
async def test_bad_input_names_the_field(
    client: httpx.AsyncClient, fields: dict[str, Any], field: str
) -> None:
    r = await client.post("/sdapi/v1/img2img", json=payload(override_settings=None, **fields))
    assert 400 <= r.status_code < 500
    assert field in str(r.json()["detail"])  # A1111's detail, or FastAPI's 422 for a schema bound
