"""A1111's X/Y/Z plot over /sdapi/v1/txt2img and img2img, through the real routes on the fake engine."""

from __future__ import annotations

import base64
import io
import json

import httpx
import pytest
from PIL import Image

from sdgate.core.infotext import parse_infotext
from tests.fakes import FakeEngine

URL = "/sdapi/v1/txt2img"
SMALL = {"width": 64, "height": 64, "steps": 2, "seed": 5}
# txt2img axis indices (A1111 v1.10.1): 0 Nothing, 1 Seed, 4 Steps, 6 CFG Scale, 7 Prompt S/R,
# 9 Sampler, 11 Checkpoint name, 18 Schedule min sigma (not supported here).
NOTHING, SEED, STEPS, CFG, PROMPT_SR, SAMPLER = 0, 1, 4, 6, 7, 9


def xyz(x=(NOTHING, ""), y=(NOTHING, ""), z=(NOTHING, ""), *, lone=False, subgrids=False, legend=True):
    args = []
    for kind, values in (x, y, z):
        args += [kind, values, []]
    return args + [legend, lone, subgrids, False, False, False, False, 0, False]


def decode(b64: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(b64)))


async def post(client: httpx.AsyncClient, args: list, **payload) -> httpx.Response:
    body = {**SMALL, "prompt": "a red circle", **payload, "script_name": "X/Y/Z Plot", "script_args": args}
    return await client.post(URL, json=body)


async def test_steps_by_cfg_grid_and_infotexts(client: httpx.AsyncClient, engine: FakeEngine) -> None:
    r = await post(client, xyz((STEPS, "1, 3"), (CFG, "5-7 (+1)")))
    assert r.status_code == 200, r.text
    body = r.json()
    assert len(body["images"]) == 1  # the grid alone, A1111's default
    grid = decode(body["images"][0])
    # two columns and three rows of 64 px cells, plus legends on top and on the left
    assert grid.width > 2 * 64 and grid.height > 3 * 64
    assert grid.width - 2 * 64 == 64 * 3 // 4  # the row legend's padding
    info = json.loads(body["info"])
    assert info["index_of_first_image"] == 1
    texts = info["infotexts"]
    assert len(texts) == 1 + 6
    cells = [parse_infotext(t) for t in texts[1:]]
    assert [c["Steps"] for c in cells] == ["1", "3"] * 3  # X varies fastest
    assert [c["CFG scale"] for c in cells] == ["5", "5", "6", "6", "7", "7"]
    assert len({c["Seed"] for c in cells}) == 1  # one fixed seed for every cell
    grid_params = parse_infotext(texts[0])
    assert grid_params["Script"] == "X/Y/Z plot"
    assert grid_params["X Type"] == "Steps" and grid_params["X Values"] == "1, 3"
    assert grid_params["Y Type"] == "CFG Scale"
    assert texts[0].rstrip().endswith("Y Values: 5-7 (+1)") or "Version" in texts[0]
    assert [(c.steps, c.cfg_scale) for c in engine.calls] == [
        (1, 5.0), (3, 5.0), (1, 6.0), (3, 6.0), (1, 7.0), (3, 7.0)
    ]  # fmt: skip
    assert all(c.batch_size == 1 and c.n_iter == 1 for c in engine.calls)
    assert len((await client.get("/api/v1/jobs")).json()["jobs"]) == 6


async def test_lone_images_and_sub_grids(client: httpx.AsyncClient) -> None:
    r = await post(client, xyz((SEED, "10,20"), z=(STEPS, "1,2")), lone=False)
    assert r.status_code == 200, r.text
    r = await post(client, xyz((SEED, "10,20"), z=(STEPS, "1,2"), lone=True, subgrids=True))
    body = r.json()
    # Z grid, 2 sub grids, 4 cells
    assert len(body["images"]) == 1 + 2 + 4
    sizes = [decode(b).size for b in body["images"]]
    assert sizes[3:] == [(64, 64)] * 4
    assert sizes[1] == sizes[2]
    info = json.loads(body["info"])
    assert len(info["infotexts"]) == 1 + 2 + 4
    assert "Steps: 2" in info["infotexts"][2]
    assert [parse_infotext(t)["Seed"] for t in info["infotexts"][3:]] == ["10", "20", "10", "20"]
    assert info["all_seeds"] == [10, 20, 10, 20]


async def test_prompt_sr_replaces_in_prompt(client: httpx.AsyncClient, engine: FakeEngine) -> None:
    r = await post(client, xyz((PROMPT_SR, "red, blue, green")), negative_prompt="not red")
    assert r.status_code == 200, r.text
    assert [c.prompt for c in engine.calls] == ["a red circle", "a blue circle", "a green circle"]
    assert [c.negative_prompt for c in engine.calls] == ["not red", "not blue", "not green"]


async def test_sampler_axis_by_label_and_text(client: httpx.AsyncClient, engine: FakeEngine) -> None:
    r = await post(client, xyz(("Sampler", "Euler a, DPM++ 2M")))
    assert r.status_code == 200, r.text
    assert [c.sampler for c in engine.calls] == ["Euler a", "DPM++ 2M"]


async def test_checkpoint_axis_picks_models(client: httpx.AsyncClient, engine: FakeEngine) -> None:
    r = await post(client, xyz((11, "alpha, beta")))  # txt2img index 11: Checkpoint name
    assert r.status_code == 200, r.text
    assert [c.model for c in engine.calls] == ["alpha", "sub_beta"]


async def test_size_and_clip_skip_axes(client: httpx.AsyncClient, engine: FakeEngine) -> None:
    r = await post(client, xyz(("Size", "64x64, 128x64"), ("Clip skip", "1, 2")))
    assert r.status_code == 200, r.text
    assert [(c.width, c.height, c.clip_skip) for c in engine.calls] == [
        (64, 64, 1), (128, 64, 1), (64, 64, 2), (128, 64, 2)
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (xyz((18, "1,2")), "Schedule min sigma"),  # an axis sdgate cannot honour
        (xyz(("Face restore", "true")), "Face restore"),
        (xyz((STEPS, "")), "no values"),
        (xyz((STEPS, "a, b")), "Steps"),
        (xyz((SAMPLER, "No Such Sampler")), "unknown sampler"),
        (xyz((PROMPT_SR, "absent, x")), "did not find"),
        (xyz((99, "1")), "out of range"),
        (xyz((STEPS, "1-200")), "max_script_images"),
    ],
)
async def test_bad_axes_are_refused_with_no_job(
    client: httpx.AsyncClient, engine: FakeEngine, args: list, needle: str
) -> None:
    r = await post(client, args)
    assert r.status_code == 400, r.text
    body = r.json()
    assert needle in body["detail"] and "script_args" in body["detail"], body
    assert engine.calls == []
    jobs = await client.get("/api/v1/jobs")
    assert jobs.status_code == 200, jobs.text
    assert jobs.json()["jobs"] == []


async def test_invalid_cell_refused_before_any_job(client: httpx.AsyncClient, engine: FakeEngine) -> None:
    r = await post(client, xyz((STEPS, "1, 0")))  # the second cell's steps are out of range
    assert r.status_code == 400, r.text
    assert "steps" in r.json()["detail"]
    assert engine.calls == []


async def test_img2img_xyz_denoising(client: httpx.AsyncClient, engine: FakeEngine) -> None:
    init = io.BytesIO()
    Image.new("RGB", (64, 64), "red").save(init, format="PNG")
    payload = {
        **SMALL,
        "init_images": [base64.b64encode(init.getvalue()).decode()],
        "script_name": "x/y/z plot",
        "script_args": xyz(("Denoising", "0.25, 0.5")),
    }
    r = await client.post("/sdapi/v1/img2img", json=payload)
    assert r.status_code == 200, r.text
    assert [c.denoising_strength for c in engine.calls] == [0.25, 0.5]
    assert r.json()["parameters"]["init_images"] is None
