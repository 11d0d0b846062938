"""The other /sdapi/v1 routes: listings, options, progress, interrupt/skip, png-info, auth."""

from __future__ import annotations

import asyncio
import base64
import io
import json

import httpx
import pytest
from PIL import Image

from sdgate.server.app import create_app
from sdgate.settings import Settings
from tests.fakes import FakeEngine

SMALL = {"steps": 2, "width": 64, "height": 64}


async def test_samplers_and_schedulers(client: httpx.AsyncClient) -> None:
    samplers = (await client.get("/sdapi/v1/samplers")).json()
    assert samplers[0]["name"] == "DPM++ 2M"
    assert samplers[0]["options"]["scheduler"] == "karras"
    assert {"Euler a", "Euler", "DDIM", "UniPC"} <= {s["name"] for s in samplers}
    schedulers = (await client.get("/sdapi/v1/schedulers")).json()
    assert schedulers[0] == {"name": "automatic", "label": "Automatic", "aliases": None, "default_rho": -1,
                             "need_inner_model": False}
    assert "karras" in [s["name"] for s in schedulers]


async def test_sd_models_lists_both_checkpoints(client: httpx.AsyncClient) -> None:
    models = (await client.get("/sdapi/v1/sd-models")).json()
    names = {m["model_name"] for m in models}
    assert {"alpha", "sub_beta"} <= names
    assert names - {"alpha", "sub_beta"} <= {"sdgate-demo-shapes"}  # the built-in model, once shipped
    for m in models:
        assert set(m) == {"title", "model_name", "hash", "sha256", "filename", "config"}


async def test_options_switch_model_for_later_jobs(
    client: httpx.AsyncClient, engine: FakeEngine, settings: Settings
) -> None:
    opts = (await client.get("/sdapi/v1/options")).json()
    assert opts["CLIP_stop_at_last_layers"] == 1.0
    models = {m["model_name"]: m["title"] for m in (await client.get("/sdapi/v1/sd-models")).json()}
    # Open WebUI posts the whole dict back with one key changed.
    opts["sd_model_checkpoint"] = models["sub_beta"]
    r = await client.post("/sdapi/v1/options", json=opts)
    assert r.status_code == 200 and r.json() is None
    assert (await client.get("/sdapi/v1/options")).json()["sd_model_checkpoint"] == models["sub_beta"]
    await client.post("/sdapi/v1/txt2img", json=SMALL)
    assert engine.calls[-1].model == "sub_beta"
    # Any alias works: the bare name.
    await client.post("/sdapi/v1/options", json={"sd_model_checkpoint": "alpha"})
    await client.post("/sdapi/v1/txt2img", json=SMALL)
    assert engine.calls[-1].model == "alpha"
    # Saved in the data dir.
    saved = json.loads((settings.data_dir / "a1111-options.json").read_text())
    assert saved["sd_model_checkpoint"].startswith("alpha")


async def test_options_unknown_model_is_404_naming_it(client: httpx.AsyncClient) -> None:
    r = await client.post("/sdapi/v1/options", json={"sd_model_checkpoint": "missing.safetensors"})
    assert r.status_code == 404
    assert r.json()["errors"] == "sd_model_checkpoint: model 'missing.safetensors' not found"


async def test_override_settings_model_applies_to_one_request(
    client: httpx.AsyncClient, engine: FakeEngine
) -> None:
    override = {"sd_model_checkpoint": "beta"}
    await client.post("/sdapi/v1/txt2img", json={**SMALL, "override_settings": override})
    assert engine.calls[-1].model == "sub_beta"
    await client.post("/sdapi/v1/txt2img", json=SMALL)
    assert engine.calls[-1].model != "sub_beta"


async def test_progress_when_idle(client: httpx.AsyncClient) -> None:
    body = (await client.get("/sdapi/v1/progress")).json()
    assert body["progress"] == 0 and body["eta_relative"] == 0
    assert body["state"]["job_count"] == 0 and body["current_image"] is None


async def test_progress_while_running_then_interrupt_keeps_finished_images(
    client: httpx.AsyncClient, engine: FakeEngine
) -> None:
    payload = {"prompt": "slow", "steps": 200, "n_iter": 3, "width": 64, "height": 64}
    task = asyncio.create_task(client.post("/sdapi/v1/txt2img", json=payload))
    body = await _wait_progress(client, lambda b: b["state"]["sampling_step"] >= 2)
    assert 0.01 <= body["progress"] < 1
    assert body["state"]["job_count"] == 3 and body["state"]["sampling_steps"] == 200
    assert Image.open(io.BytesIO(base64.b64decode(body["current_image"]))).size == (8, 8)
    skipped = (await client.get("/sdapi/v1/progress", params={"skip_current_image": True})).json()
    assert skipped["current_image"] is None
    assert (await client.post("/sdapi/v1/interrupt")).json() == {}
    r = await asyncio.wait_for(task, 10)
    assert r.status_code == 200
    assert len(r.json()["images"]) == 1  # the interrupted iteration is decoded and returned


async def test_progress_names_the_kind_of_job(client: httpx.AsyncClient) -> None:
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), "red").save(buf, "PNG")
    init = base64.b64encode(buf.getvalue()).decode()
    for route, name in (("txt2img", "scripts_txt2img"), ("img2img", "scripts_img2img")):
        payload = {"prompt": "slow", "steps": 200, "width": 64, "height": 64, "init_images": [init]}
        task = asyncio.create_task(client.post(f"/sdapi/v1/{route}", json=payload))
        body = await _wait_progress(client, lambda b: b["state"]["sampling_step"] >= 1)
        assert body["state"]["job"] == name
        await client.post("/sdapi/v1/interrupt")
        assert (await asyncio.wait_for(task, 10)).status_code == 200


async def test_skip_moves_to_next_iteration(client: httpx.AsyncClient) -> None:
    payload = {"prompt": "slow", "steps": 100, "n_iter": 2, "width": 64, "height": 64}
    task = asyncio.create_task(client.post("/sdapi/v1/txt2img", json=payload))
    await _wait_progress(client, lambda b: b["state"]["sampling_step"] >= 1)
    assert (await client.post("/sdapi/v1/skip")).json() is None
    await _wait_progress(client, lambda b: b["state"]["job_no"] == 1 and b["state"]["sampling_step"] >= 1)
    await client.post("/sdapi/v1/interrupt")
    r = await asyncio.wait_for(task, 20)
    assert r.status_code == 200
    assert len(r.json()["images"]) == 1


async def _wait_progress(client: httpx.AsyncClient, ready, timeout: float = 10) -> dict:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        body = (await client.get("/sdapi/v1/progress")).json()
        if body["state"]["job_count"] > 0 and ready(body):
            return body
        await asyncio.sleep(0.02)
    raise AssertionError("progress never reached the expected state")


async def test_png_info_round_trip(client: httpx.AsyncClient) -> None:
    r = await client.post("/sdapi/v1/txt2img", json={**SMALL, "prompt": "a cat", "negative_prompt": "blurry",
                                                      "seed": 42, "cfg_scale": 6.5})
    image = r.json()["images"][0]
    info = (await client.post("/sdapi/v1/png-info", json={"image": "data:image/png;base64," + image})).json()
    assert info["info"].startswith("a cat\nNegative prompt: blurry\n")
    params = info["parameters"]
    assert params["Prompt"] == "a cat" and params["Negative prompt"] == "blurry"
    assert params["Seed"] == "42" and params["CFG scale"] == "6.5"
    assert (params["Size-1"], params["Size-2"]) == ("64", "64")


async def test_png_info_rejects_garbage_naming_the_field(client: httpx.AsyncClient) -> None:
    r = await client.post("/sdapi/v1/png-info", json={"image": "bm90IGFuIGltYWdl"})
    assert 400 <= r.status_code < 500
    assert "image" in r.json()["detail"]


async def test_listing_routes(client: httpx.AsyncClient) -> None:
    scripts = (await client.get("/sdapi/v1/scripts")).json()
    assert "x/y/z plot" in scripts["txt2img"] and "sd upscale" in scripts["img2img"]
    assert "controlnet m2m" not in scripts["txt2img"]  # webuiapi injects args for names it sees
    flags = (await client.get("/sdapi/v1/cmd-flags")).json()
    assert flags["api"] is True and flags["api_auth"] is None
    mem = (await client.get("/sdapi/v1/memory")).json()
    assert mem["ram"]["total"] > mem["ram"]["free"] > 0
    assert (await client.post("/sdapi/v1/refresh-checkpoints")).status_code == 200


@pytest.fixture
def auth_settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"api_auth": "alice:s3cret,bob:pw"})


async def test_basic_auth_on_every_route(auth_settings: Settings) -> None:
    app = create_app(auth_settings, engine=FakeEngine())
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            for path in ("/sdapi/v1/samplers", "/sdapi/v1/options", "/docs", "/openapi.json"):
                r = await c.get(path)
                assert r.status_code == 401, path
                assert r.headers["www-authenticate"] == "Basic"
                body = r.json()  # A1111's error shape on its routes, the server's on the others
                assert (body["detail"] if path.startswith("/sdapi") else body["error"]["message"]) == (
                    "Not authenticated")
                assert r.headers["x-request-id"]
            r = await c.get("/sdapi/v1/samplers", auth=("alice", "wrong"))
            assert (r.status_code, r.json()["detail"]) == (401, "Incorrect username or password")
            r = await c.get("/sdapi/v1/samplers", auth=("mallory", "s3cret"))
            assert r.status_code == 401
            assert (await c.get("/sdapi/v1/samplers", auth=("bob", "pw"))).status_code == 200
            r = await c.post("/sdapi/v1/txt2img", json=SMALL, auth=("alice", "s3cret"))
            assert r.status_code == 200
            assert (await c.get("/healthz")).status_code == 200
