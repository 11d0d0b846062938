"""/sdapi/v1: sd_vae per request and as an option, override_settings that persist, save_images."""

from __future__ import annotations

import base64
import io
import json
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from sdgate.server.dialects.a1111.outputs import next_number, write_numbered
from sdgate.settings import Settings
from tests.fakes import FakeEngine
from tests.server.real_engine import real_engine_client

SMALL = {"width": 64, "height": 64, "steps": 2, "seed": 100}


def image(b64: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(b64)))


def today() -> set[str]:
    return {datetime.now().strftime("%Y-%m-%d")}


def pngs(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*.png")) if folder.exists() else []


# --- over the fake engine: options, files, grids ------------------------------------------------


@pytest.fixture
def models_dir(models_dir: Path) -> Path:
    for rel in ("VAE/blue.safetensors", "vae/sub/green.pt", "Stable-diffusion/alpha.vae.ckpt"):
        (models_dir / rel).parent.mkdir(parents=True, exist_ok=True)
        (models_dir / rel).write_bytes(b"not loaded by the fake engine")
    return models_dir


async def txt2img(client: httpx.AsyncClient, **fields: object) -> dict:
    r = await client.post("/sdapi/v1/txt2img", json={**SMALL, **fields})
    assert r.status_code == 200, r.text
    return r.json()


async def test_sd_vae_lists_and_rescans(client: httpx.AsyncClient, models_dir: Path) -> None:
    listed = (await client.get("/sdapi/v1/sd-vae")).json()
    assert [v["model_name"] for v in listed] == ["alpha.vae.ckpt", "blue.safetensors", "green.pt"]
    assert listed[1]["filename"] == str((models_dir / "VAE" / "blue.safetensors").resolve())
    # A VAE beside a checkpoint is no checkpoint.
    assert "alpha.vae" not in {m["model_name"] for m in (await client.get("/sdapi/v1/sd-models")).json()}
    (models_dir / "VAE" / "new.safetensors").write_bytes(b"x")
    assert (await client.post("/sdapi/v1/refresh-vae")).json() is None
    assert "new.safetensors" in {v["model_name"] for v in (await client.get("/sdapi/v1/sd-vae")).json()}


async def test_sd_vae_reaches_the_engine_by_override_option_and_automatic(
    client: httpx.AsyncClient, engine: FakeEngine
) -> None:
    await txt2img(client, override_settings={"sd_model_checkpoint": "beta"})
    assert engine.calls[-1].vae is None  # "Automatic", and no VAE is named like beta
    await txt2img(client, override_settings={"sd_model_checkpoint": "alpha"})
    assert engine.calls[-1].vae == "alpha.vae.ckpt"  # "Automatic": the one named like alpha
    await txt2img(client, override_settings={"sd_vae": "blue"})
    assert engine.calls[-1].vae == "blue.safetensors"
    await txt2img(client, override_settings={"sd_vae": "None", "sd_model_checkpoint": "alpha"})
    assert engine.calls[-1].vae is None
    assert (await client.post("/sdapi/v1/options", json={"sd_vae": "sub/green.pt"})).status_code == 200
    assert (await client.get("/sdapi/v1/options")).json()["sd_vae"] == "green.pt"
    await txt2img(client)
    assert engine.calls[-1].vae == "green.pt"


@pytest.mark.parametrize("value", ["nope.safetensors", 3, ""])
async def test_unknown_vaes_are_400s_naming_the_field(client: httpx.AsyncClient, value: object) -> None:
    r = await client.post("/sdapi/v1/txt2img", json={**SMALL, "override_settings": {"sd_vae": value}})
    assert r.status_code == 400
    assert set(r.json()) == {"error", "detail", "body", "errors"}
    assert "override_settings.sd_vae" in r.json()["detail"]
    r = await client.post("/sdapi/v1/options", json={"sd_vae": value})
    if isinstance(value, str):  # a name: looked up, a 400 naming it
        assert r.status_code == 400 and "sd_vae" in r.json()["detail"]
    else:  # not a name at all: the options schema's 422 naming the key
        assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "sd_vae"]
    assert (await client.get("/sdapi/v1/options")).json()["sd_vae"] == "Automatic"


async def test_overrides_persist_only_when_not_restored(
    client: httpx.AsyncClient, engine: FakeEngine
) -> None:
    overrides = {"sd_vae": "blue.safetensors", "CLIP_stop_at_last_layers": 2, "sd_model_checkpoint": "beta"}
    await txt2img(client, override_settings=overrides)  # restored afterwards: A1111's default
    options = (await client.get("/sdapi/v1/options")).json()
    assert options["sd_vae"] == "Automatic" and options["CLIP_stop_at_last_layers"] == 1
    assert options["sd_model_checkpoint"].startswith("alpha")
    await txt2img(client, override_settings=overrides, override_settings_restore_afterwards=False)
    options = (await client.get("/sdapi/v1/options")).json()
    assert options["sd_vae"] == "blue.safetensors" and options["CLIP_stop_at_last_layers"] == 2
    assert options["sd_model_checkpoint"].startswith("sub/beta")
    # Later jobs without overrides run with them.
    await txt2img(client)
    call = engine.calls[-1]
    assert (call.vae, call.clip_skip, call.model) == ("blue.safetensors", 2, "sub_beta")


async def test_save_images_writes_samples_and_a_grid_and_returns_the_grid_first(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    body = await txt2img(client, prompt="cat", batch_size=2, n_iter=2, save_images=True)
    outputs = settings.data_dir / "outputs"
    (day,) = {p.name for p in (outputs / "txt2img-images").iterdir()} & today()
    assert pngs(outputs / "txt2img-images") == [f"{day}/0000{i}-{100 + i}.png" for i in range(4)]
    assert pngs(outputs / "txt2img-grids") == [f"{day}/grid-0000.png"]
    # The response: the grid first (2 x 2 images), then the four images; infotexts likewise.
    info = json.loads(body["info"])
    assert len(body["images"]) == 5 and image(body["images"][0]).size == (128, 128)
    assert [image(b).size for b in body["images"][1:]] == [(64, 64)] * 4
    assert info["index_of_first_image"] == 1 and len(info["infotexts"]) == 5
    assert info["infotexts"][0] == info["infotexts"][1] and info["all_seeds"] == [100, 101, 102, 103]
    grid = Image.open(outputs / "txt2img-grids" / day / "grid-0000.png")
    assert grid.size == (128, 128) and grid.info["parameters"] == info["infotexts"][0]
    third = Image.open(outputs / "txt2img-images" / day / "00002-102.png")
    assert third.info["parameters"] == info["infotexts"][3] and "Seed: 102" in third.info["parameters"]
    assert np.array_equal(np.asarray(grid)[64:, :64], np.asarray(third))  # row 2, column 1
    # The counter goes on per folder; a single image makes no grid.
    single = await txt2img(client, seed=7, save_images=True)
    assert pngs(outputs / "txt2img-images")[-1] == f"{day}/00004-7.png"
    assert pngs(outputs / "txt2img-grids") == [f"{day}/grid-0000.png"]
    assert len(single["images"]) == 1 and json.loads(single["info"])["index_of_first_image"] == 0


async def test_without_save_images_nothing_is_saved_and_no_grid(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    body = await txt2img(client, batch_size=2, do_not_save_grid=False)
    assert len(body["images"]) == 2 and json.loads(body["info"])["index_of_first_image"] == 0
    assert not (settings.data_dir / "outputs").exists()


async def test_send_images_false_still_saves(client: httpx.AsyncClient, settings: Settings) -> None:
    body = await txt2img(client, batch_size=2, save_images=True, send_images=False)
    assert body["images"] == []
    info = json.loads(body["info"])
    assert info["index_of_first_image"] == 1 and len(info["infotexts"]) == 3
    outputs = settings.data_dir / "outputs"
    assert len(pngs(outputs / "txt2img-images")) == 2 and len(pngs(outputs / "txt2img-grids")) == 1


async def test_grid_options_apply_and_can_be_overridden(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    body = await txt2img(client, batch_size=3, save_images=True, override_settings={"n_rows": 1})
    assert image(body["images"][0]).size == (192, 64)
    no_return = await txt2img(
        client, batch_size=2, save_images=True, override_settings={"return_grid": False}
    )
    assert len(no_return["images"]) == 2
    assert len(pngs(settings.data_dir / "outputs" / "txt2img-grids")) == 2  # still saved
    await client.post("/sdapi/v1/options", json={"grid_save": False, "samples_save": False})
    body = await txt2img(client, batch_size=2, save_images=True)
    assert len(body["images"]) == 3  # returned, not saved
    assert len(pngs(settings.data_dir / "outputs" / "txt2img-grids")) == 2
    assert len(pngs(settings.data_dir / "outputs" / "txt2img-images")) == 5


async def test_img2img_saves_under_img2img_folders(client: httpx.AsyncClient, settings: Settings) -> None:
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), "gray").save(buf, format="PNG")
    init = base64.b64encode(buf.getvalue()).decode()
    r = await client.post(
        "/sdapi/v1/img2img", json={**SMALL, "init_images": [init], "batch_size": 2, "save_images": True}
    )
    assert r.status_code == 200, r.text
    outputs = settings.data_dir / "outputs"
    assert len(pngs(outputs / "img2img-images")) == 2 and len(pngs(outputs / "img2img-grids")) == 1
    assert not (outputs / "txt2img-images").exists()


def test_numbering_follows_a1111(tmp_path: Path) -> None:
    for name in ("00007-1.png", "00003-5.png", "grid-0012.png", "notes.txt", "x-00099.png"):
        (tmp_path / name).write_bytes(b"")
    assert next_number(tmp_path, "") == 8 and next_number(tmp_path, "grid") == 13
    assert next_number(tmp_path / "missing", "") == 0
    assert write_numbered(tmp_path, b"a", decoration="42").name == "00008-42.png"
    assert write_numbered(tmp_path, b"b", basename="grid").name == "grid-0013.png"


# --- over the real engine: a VAE file changes the pixels ---------------------------------------


@pytest.fixture(scope="module")
def vae_models(tiny_models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.engine.test_vae import vae_state, write_vae

    root = tmp_path_factory.mktemp("vae-route-models")
    (root / "Stable-diffusion").symlink_to(tiny_models_dir / "Stable-diffusion")
    write_vae(root / "VAE" / "blue.safetensors", vae_state(7, "ldm"))
    return root


@pytest.fixture
async def real_client(vae_models: Path, tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    async with real_engine_client(vae_models, tmp_path / "data") as c:
        yield c


async def test_a_vae_file_changes_the_output_and_the_next_job_is_as_before(
    real_client: httpx.AsyncClient,
) -> None:
    base = {**SMALL, "override_settings": {"sd_model_checkpoint": "tiny-sd15"}}

    async def run(**overrides: object) -> dict:
        body = {**base, "override_settings": {**base["override_settings"], **overrides}}
        r = await real_client.post("/sdapi/v1/txt2img", json=body)
        assert r.status_code == 200, r.text
        return r.json()

    before = await run()
    blue = await run(sd_vae="blue.safetensors")
    after = await run()
    pixels = [np.asarray(image(b["images"][0])) for b in (before, blue, after)]
    assert not np.array_equal(pixels[0], pixels[1]) and np.array_equal(pixels[0], pixels[2])
    info = json.loads(blue["info"])
    assert info["sd_vae_name"] == "blue.safetensors" and len(info["sd_vae_hash"]) == 10
    assert f"VAE hash: {info['sd_vae_hash']}, VAE: blue.safetensors" in info["infotexts"][0]
    assert json.loads(before["info"])["sd_vae_name"] is None
    r = await real_client.post("/sdapi/v1/png-info", json={"image": blue["images"][0]})
    assert r.json()["parameters"]["VAE"] == "blue.safetensors"
