"""A1111's Prompt matrix, Prompts from file or textbox and SD upscale, and the script listings."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import httpx
from PIL import Image

from sdgate.core.infotext import parse_infotext
from sdgate.core.requests import PostprocessRequest
from sdgate.core.tiles import split_grid, tile_counts
from sdgate.jobs.store import SqlJobStore
from sdgate.settings import Settings
from tests.fakes import FakeEngine

SMALL = {"width": 64, "height": 64, "steps": 2, "seed": 100}


def decode(b64: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(b64)))


def png_b64(size: tuple[int, int], colour: str = "red") -> str:
    out = io.BytesIO()
    Image.new("RGB", size, colour).save(out, format="PNG")
    return base64.b64encode(out.getvalue()).decode()


async def test_listing_and_script_info(client: httpx.AsyncClient) -> None:
    scripts = (await client.get("/sdapi/v1/scripts")).json()
    assert scripts == {
        "txt2img": ["prompt matrix", "prompts from file or textbox", "x/y/z plot", "controlnet"],
        "img2img": [
            "prompt matrix", "prompts from file or textbox", "sd upscale", "x/y/z plot", "controlnet"
        ],
    }
    info = (await client.get("/sdapi/v1/script-info")).json()
    assert len(info) == 9  # the seven selectable scripts, and controlnet (always on) on both tabs
    controlnet = {(s["name"], s["is_alwayson"]) for s in info if s["name"] == "controlnet"}
    assert controlnet == {("controlnet", True)}
    xyz = next(s for s in info if s["name"] == "x/y/z plot" and not s["is_img2img"])
    assert set(xyz) == {"name", "is_alwayson", "is_img2img", "args"}
    assert len(xyz["args"]) == 18
    assert xyz["args"][0]["label"] == "X type" and xyz["args"][0]["value"] == "Seed"
    assert xyz["args"][0]["choices"][7] == "Prompt S/R"
    assert set(xyz["args"][0]) == {"label", "value", "minimum", "maximum", "step", "choices"}
    upscale = next(s for s in info if s["name"] == "sd upscale")
    assert upscale["is_img2img"] and [a["label"] for a in upscale["args"]][1:] == [
        "Tile overlap", "Upscaler", "Scale Factor"
    ]  # fmt: skip


async def test_unknown_script_is_a1111s_422(client: httpx.AsyncClient, engine: FakeEngine) -> None:
    r = await client.post("/sdapi/v1/txt2img", json={**SMALL, "script_name": "No Such Script"})
    assert r.status_code == 422, r.text
    assert r.json()["detail"] == "Script 'No Such Script' not found"
    r = await client.post("/sdapi/v1/txt2img", json={**SMALL, "script_name": "SD Upscale"})  # img2img only
    assert r.status_code == 422, r.text
    assert engine.calls == []


async def test_prompt_matrix_combinations_and_grid(client: httpx.AsyncClient, engine: FakeEngine) -> None:
    payload = {**SMALL, "prompt": "a cat|red|hat", "script_name": "prompt matrix", "script_args": []}
    r = await client.post("/sdapi/v1/txt2img", json=payload)
    assert r.status_code == 200, r.text
    assert [c.prompt for c in engine.calls] == ["a cat", "a cat, red", "a cat, hat", "a cat, red, hat"]
    assert [c.seed for c in engine.calls] == [100] * 4
    body = r.json()
    assert len(body["images"]) == 5  # the grid, then every combination
    grid = decode(body["images"][0])
    assert grid.width > 128 and grid.height > 128  # 2x2 cells plus legends
    info = json.loads(body["info"])
    assert info["index_of_first_image"] == 1
    assert len(info["infotexts"]) == 5 and info["infotexts"][0] == info["infotexts"][1]
    assert info["all_prompts"] == ["a cat", "a cat, red", "a cat, hat", "a cat, red, hat"]


async def test_prompt_matrix_options(client: httpx.AsyncClient, engine: FakeEngine) -> None:
    payload = {**SMALL, "negative_prompt": "ugly|blurry", "script_name": "Prompt Matrix",
               "script_args": [True, True, "negative", "space", 4]}  # fmt: skip
    r = await client.post("/sdapi/v1/txt2img", json=payload)
    assert r.status_code == 200, r.text
    assert [c.negative_prompt for c in engine.calls] == ["ugly", "blurry ugly"]
    assert [c.seed for c in engine.calls] == [100, 101]
    bad = {**payload, "script_args": [False, False, "sideways"]}
    r = await client.post("/sdapi/v1/txt2img", json=bad)
    assert r.status_code == 400 and "Prompt type" in r.json()["detail"]


async def test_prompt_matrix_over_the_limit(client: httpx.AsyncClient, engine: FakeEngine) -> None:
    payload = {**SMALL, "prompt": "x" + "|a" * 8, "script_name": "prompt matrix"}  # 256 images
    r = await client.post("/sdapi/v1/txt2img", json=payload)
    assert r.status_code == 400, r.text
    assert "max_script_images" in r.json()["detail"]
    assert engine.calls == []
    assert (await client.get("/api/v1/jobs")).json()["jobs"] == []


async def test_prompts_from_file_lines_and_args(client: httpx.AsyncClient, engine: FakeEngine) -> None:
    text = "\n".join([
        "a red circle",
        "",
        '--prompt "a blue square" --steps 3 --negative_prompt dull colours --batch_size 2',
        "--prompt a cat --cfg_scale 4.5 --sampler_name \"Euler a\" --seed 7 --width 128",
        "--bogus 1 weird line",
    ])  # fmt: skip
    payload = {**SMALL, "prompt": "", "script_name": "prompts from file or textbox",
               "script_args": [False, False, "start", text]}  # fmt: skip
    r = await client.post("/sdapi/v1/txt2img", json=payload)
    assert r.status_code == 200, r.text
    calls = engine.calls
    assert [c.prompt for c in calls] == ["a red circle", "a blue square", "a cat", "--bogus 1 weird line"]
    assert calls[1].steps == 3 and calls[1].negative_prompt == "dull colours" and calls[1].batch_size == 2
    assert (calls[2].cfg_scale, calls[2].sampler, calls[2].seed, calls[2].width) == (4.5, "Euler a", 7, 128)
    body = r.json()
    assert len(body["images"]) == 5  # 1 + 2 + 1 + 1, in line order, no grid
    info = json.loads(body["info"])
    assert len(info["infotexts"]) == 5 and info["index_of_first_image"] == 0
    assert "Steps: 3" in info["infotexts"][1]


async def test_prompts_from_file_joins_and_iterates(client: httpx.AsyncClient, engine: FakeEngine) -> None:
    script = {"script_name": "Prompts from file or textbox", "script_args": [True, False, "end", "cat\ndog"]}
    payload = {**SMALL, "prompt": "photo", "seed": -1, "n_iter": 2, **script}
    r = await client.post("/sdapi/v1/txt2img", json=payload)
    assert r.status_code == 200, r.text
    assert [c.prompt for c in engine.calls] == ["photo cat", "photo dog"]
    assert engine.calls[1].seed == engine.calls[0].seed + 2  # iterate: + batch_size * n_iter


async def test_sd_upscale_size_and_tiles(client: httpx.AsyncClient, engine: FakeEngine) -> None:
    payload = {**SMALL, "init_images": [png_b64((80, 48))], "denoising_strength": 0.3, "batch_size": 2,
               "script_name": "SD upscale", "script_args": [None, 16, 1, 2]}  # overlap 16, Lanczos, x2
    r = await client.post("/sdapi/v1/img2img", json=payload)
    assert r.status_code == 200, r.text
    body = r.json()
    assert len(body["images"]) == 1
    out = decode(body["images"][0])
    assert out.size == (160, 96)
    cols, rows = tile_counts(160, 96, 64, 64, 16)
    tiles = cols * rows
    assert tiles == 3 * 2
    assert sum(c.image_count for c in engine.calls) == tiles
    assert [len(c.init_images) for c in engine.calls] == [2, 2, 2]  # batch_size tiles per job
    assert [c.seed for c in engine.calls] == [100, 101, 102]
    assert all((c.width, c.height, c.denoising_strength) == (64, 64, 0.3) for c in engine.calls)
    params = parse_infotext(json.loads(body["info"])["infotexts"][0])
    assert params["SD upscale overlap"] == "16" and params["SD upscale upscaler"] == "Lanczos"


async def test_sd_upscale_refusals(client: httpx.AsyncClient, engine: FakeEngine) -> None:
    base = {**SMALL, "init_images": [png_b64((64, 64))], "script_name": "sd upscale"}
    for args, needle in (
        ([None, 64, 1, 2], "Tile overlap"),
        ([None, 4, "No Such Upscaler", 2], "unknown upscaler"),
        ([None, 4, 1, 0], "smaller than one"),
        ([None, 0, 1, 4], "max_script_images"),
    ):
        payload = {**base, "script_args": args, "width": 8, "height": 8}
        r = await client.post("/sdapi/v1/img2img", json=payload)
        assert r.status_code == 400, (args, r.text)
        assert needle in r.json()["detail"], r.json()
    assert engine.calls == []


def test_split_and_combine_round_trip() -> None:
    from sdgate.core.tiles import combine_grid

    image = Image.effect_noise((200, 120), 64).convert("RGB")
    grid = split_grid(image, 64, 64, 16)
    assert grid.count == len(grid.images())
    assert all(tile.size == (64, 64) for tile in grid.images())
    assert list(combine_grid(grid).getdata()) == list(image.getdata())


async def test_sd_upscale_with_a_model_upscaler_runs_it_as_a_worker_job(
    client: httpx.AsyncClient, engine: FakeEngine, models_dir: Path, settings: Settings
) -> None:
    """A model upscaler (spandrel, torch) runs on a worker as an extras job of the caller, never in
    the API process; the tiles then go to the engine as with a built-in upscaler."""
    from tests.engine import spandrel_models as sm

    sm.write_upscaler(models_dir, "ESRGAN", name="tiny-x4")
    payload = {**SMALL, "init_images": [png_b64((80, 48))], "denoising_strength": 0.3,
               "script_name": "SD upscale", "script_args": [None, 16, "tiny-x4", 2]}
    r = await client.post("/sdapi/v1/img2img", json=payload)
    assert r.status_code == 200, r.text
    assert decode(r.json()["images"][0]).size == (160, 96)
    params = parse_infotext(json.loads(r.json()["info"])["infotexts"][0])
    assert params["SD upscale upscaler"] == "tiny-x4"
    with SqlJobStore(settings.database_url) as store:
        extras = store.list(dialect="a1111-extras")
    assert len(extras) == 1 and extras[0].state.value == "succeeded"
    request = extras[0].request
    assert isinstance(request, PostprocessRequest)
    assert (request.upscaler_1, request.width, request.height, request.crop) == ("tiny-x4", 160, 96, False)
    assert sum(c.image_count for c in engine.calls) == 6  # the tiles, as with Lanczos
