"""A1111 extras (upscaling) and the remaining listings and controls."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import httpx
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from sdgate.engine.upscalers import RRDBNet


def b64(image: Image.Image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def size_of(value: str) -> tuple[int, int]:
    return Image.open(io.BytesIO(base64.b64decode(value))).size


@pytest.fixture
def esrgan(models_dir: Path) -> str:
    torch.manual_seed(0)
    (models_dir / "RealESRGAN").mkdir(parents=True, exist_ok=True)
    net = RRDBNet(feat=8, blocks=1, grow=4, scale=4)
    save_file(net.state_dict(), str(models_dir / "RealESRGAN" / "tiny-x4.safetensors"))
    (models_dir / "VAE").mkdir(exist_ok=True)
    (models_dir / "VAE" / "my-vae.safetensors").write_bytes(b"")
    return "tiny-x4"


async def test_single_image_scale_and_size(client: httpx.AsyncClient, esrgan: str) -> None:
    image = b64(Image.effect_noise((30, 20), 50).convert("RGB"))
    r = await client.post(
        "/sdapi/v1/extra-single-image", json={"image": image, "upscaler_1": esrgan, "upscaling_resize": 2}
    )
    assert r.status_code == 200, r.text
    assert size_of(r.json()["image"]) == (60, 40)
    r = await client.post(
        "/sdapi/v1/extra-single-image",
        json={
            "image": image,
            "upscaler_1": "Lanczos",
            "upscaler_2": "Nearest",
            "extras_upscaler_2_visibility": 0.5,
            "resize_mode": 1,
            "upscaling_resize_w": 64,
            "upscaling_resize_h": 64,
            "upscaling_crop": True,
        },
    )
    assert r.status_code == 200 and size_of(r.json()["image"]) == (64, 64)


async def test_batch_images(client: httpx.AsyncClient) -> None:
    items = [{"data": b64(Image.new("RGB", (10 + i, 10))), "name": f"{i}.png"} for i in range(3)]
    r = await client.post(
        "/sdapi/v1/extra-batch-images",
        json={"imageList": items, "upscaler_1": "Nearest", "upscaling_resize": 3},
    )
    assert r.status_code == 200, r.text
    assert [size_of(v) for v in r.json()["images"]] == [(30, 30), (33, 30), (36, 30)]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"image": "nope"}, "image"),
        ({"upscaler_1": "Nope"}, "upscaler_1"),
        ({"gfpgan_visibility": 1}, "gfpgan_visibility"),
        ({"upscaling_resize": 100}, "upscaling_resize"),
    ],
)
async def test_extras_errors_name_the_field(client: httpx.AsyncClient, body: dict, field: str) -> None:
    payload = {"image": b64(Image.new("RGB", (8, 8))), **body}
    r = await client.post("/sdapi/v1/extra-single-image", json=payload)
    assert 400 <= r.status_code < 500 and field in r.json()["detail"]
    r = await client.post("/sdapi/v1/extra-batch-images", json={"imageList": [{"data": "bad"}]})
    assert r.status_code == 400 and "imageList.0.data" in r.json()["detail"]


async def test_listings(client: httpx.AsyncClient, esrgan: str) -> None:
    ups = (await client.get("/sdapi/v1/upscalers")).json()
    assert [u["name"] for u in ups][:3] == ["None", "Lanczos", "Nearest"] and ups[3]["name"] == esrgan
    modes = (await client.get("/sdapi/v1/latent-upscale-modes")).json()
    assert modes[0] == {"name": "Latent"}
    assert (await client.get("/sdapi/v1/sd-vae")).json()[0]["model_name"] == "my-vae.safetensors"
    assert (await client.get("/sdapi/v1/realesrgan-models")).json()[0]["name"] == esrgan
    for path in ("face-restorers", "hypernetworks"):
        assert (await client.get(f"/sdapi/v1/{path}")).json() == []
    for path in ("refresh-vae", "unload-checkpoint", "reload-checkpoint"):
        assert (await client.post(f"/sdapi/v1/{path}")).status_code == 200


async def test_server_stop_is_off_by_default(client: httpx.AsyncClient) -> None:
    r = await client.post("/sdapi/v1/server-stop")
    assert r.status_code == 404 and "disabled" in r.json()["detail"]
