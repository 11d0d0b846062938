"""A1111 extras (upscaling) and the remaining listings and controls."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import httpx
import pytest
from PIL import Image

from tests.engine import spandrel_models as sm


def b64(image: Image.Image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def size_of(value: str) -> tuple[int, int]:
    return Image.open(io.BytesIO(base64.b64decode(value))).size


@pytest.fixture
def esrgan(models_dir: Path) -> str:
    sm.write_upscaler(models_dir, "ESRGAN", name="tiny-x4")
    (models_dir / "RealESRGAN").mkdir(exist_ok=True)
    (models_dir / "ESRGAN" / "tiny-x4.safetensors").rename(models_dir / "RealESRGAN" / "tiny-x4.safetensors")
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
    assert 400 <= r.status_code < 500 and field in str(r.json()["detail"])  # or a schema bound's 422
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


@pytest.mark.parametrize("arch", sm.ARCHITECTURES)
async def test_every_spandrel_family_upscales(client: httpx.AsyncClient, models_dir: Path, arch: str) -> None:
    sm.write_upscaler(models_dir, arch)
    _, scale = sm.build(arch)
    image = b64(Image.effect_noise((24, 16), 50).convert("RGB"))
    r = await client.post(
        "/sdapi/v1/extra-single-image", json={"image": image, "upscaler_1": arch, "upscaling_resize": scale}
    )
    assert r.status_code == 200, r.text
    assert size_of(r.json()["image"]) == (24 * scale, 16 * scale)
    listed = {u["name"]: u for u in (await client.get("/sdapi/v1/upscalers")).json()}
    assert listed[arch]["scale"] == scale and listed[arch]["model_path"].endswith(".safetensors")


async def test_an_unrecognised_file_is_a_400_naming_it(client: httpx.AsyncClient, models_dir: Path) -> None:
    (models_dir / "ESRGAN").mkdir(parents=True, exist_ok=True)
    (models_dir / "ESRGAN" / "junk.pth").write_bytes(b"junk")
    r = await client.post(
        "/sdapi/v1/extra-single-image", json={"image": b64(Image.new("RGB", (8, 8))), "upscaler_1": "junk"}
    )
    assert r.status_code == 400 and "junk.pth" in r.json()["detail"]


async def test_face_restorers_listed_and_checked(client: httpx.AsyncClient, models_dir: Path) -> None:
    image = b64(Image.new("RGB", (8, 8)))
    r = await client.post("/sdapi/v1/extra-single-image", json={"image": image, "codeformer_visibility": 1})
    assert r.status_code == 400 and "no face restorer is installed" in r.json()["detail"]
    r = await client.post("/sdapi/v1/txt2img", json={"prompt": "x", "restore_faces": True})
    assert r.status_code == 400 and "restore_faces" in r.json()["detail"]
    (models_dir / "GFPGAN").mkdir()
    (models_dir / "GFPGAN" / "GFPGANv1.4.pth").write_bytes(b"")  # listing reads no weights
    listed = (await client.get("/sdapi/v1/face-restorers")).json()
    assert listed == [{"name": "GFPGAN", "cmd_dir": str((models_dir / "GFPGAN").resolve())}]
    r = await client.post("/sdapi/v1/extra-single-image", json={"image": image, "codeformer_visibility": 1})
    assert r.status_code == 400 and "'CodeFormer' is not installed" in r.json()["detail"]
    r = await client.post("/sdapi/v1/txt2img", json={"prompt": "x", "restore_faces": True})
    assert r.status_code == 200, r.text
    info = json.loads(r.json()["info"])
    assert info["restore_faces"] is True and info["face_restoration_model"] == "GFPGAN"


@pytest.mark.slow
async def test_gfpgan_visibility_runs_gfpgan(client: httpx.AsyncClient, models_dir: Path) -> None:
    from safetensors.torch import save_file

    (models_dir / "GFPGAN").mkdir()
    state = {k: v.half() for k, v in sm.state_dict(sm.full_gfpgan()).items()}
    save_file(state, str(models_dir / "GFPGAN" / "GFPGANv1.4.safetensors"))
    image = Image.effect_noise((32, 24), 50).convert("RGB")
    r = await client.post(
        "/sdapi/v1/extra-single-image",
        json={"image": b64(image), "gfpgan_visibility": 0.5, "upscaler_1": "None", "upscaling_resize": 1},
    )
    assert r.status_code == 200, r.text
    out = Image.open(io.BytesIO(base64.b64decode(r.json()["image"])))
    assert out.size == (32, 24) and out.convert("RGB") != image
