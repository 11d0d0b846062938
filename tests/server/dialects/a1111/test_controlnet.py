"""A1111's ControlNet extension API: ``alwayson_scripts.controlnet`` units on txt2img/img2img as
``ControlNetUnit``s (the fake engine receives them), webuiapi's ControlNetUnit unchanged, and the
extension's ``/controlnet/*`` routes."""

from __future__ import annotations

import base64
import io
import json
import re
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from sdgate.core.requests import ControlMode, ControlNetUnit, ControlResize
from sdgate.server.app import create_app
from sdgate.settings import Settings
from tests.fakes import FakeEngine, write_fake_checkpoint

URL = "/sdapi/v1/txt2img"


def write_safetensors(path: Path, shapes: dict[str, list[int]]) -> Path:
    """A safetensors header with these tensors (no data): enough for the catalog and family checks."""
    header = {k: {"dtype": "F16", "shape": s, "data_offsets": [0, 0]} for k, s in shapes.items()}
    data = json.dumps({"__metadata__": {"format": "pt"}, **header}).encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(struct.pack("<Q", len(data)) + data)
    return path


def controlnet_for(width: int) -> dict[str, list[int]]:
    return {"input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": [320, width]}


@pytest.fixture
def models_dir(tmp_path: Path) -> Path:
    root = tmp_path / "models"
    write_fake_checkpoint(root / "Stable-diffusion" / "alpha.safetensors")
    write_safetensors(root / "Stable-diffusion" / "sd15.safetensors", {
        "model.diffusion_model.input_blocks.0.0.weight": [320, 4, 3, 3],
        "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight": [49408, 768],
    })  # fmt: skip
    write_safetensors(root / "ControlNet" / "control_canny.safetensors", controlnet_for(768))
    write_safetensors(root / "ControlNet" / "xl" / "control_xl_scribble.safetensors", controlnet_for(2048))
    return root


def png_b64(image: Image.Image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def square() -> Image.Image:
    image = Image.new("RGB", (64, 64), "black")
    image.paste((255, 255, 255), (16, 16, 48, 48))
    return image


IMAGE = png_b64(square())
TUTORIAL = {"enabled": True, "module": "canny", "model": "control_canny", "weight": 1.0, "image": IMAGE,
            "guidance_start": 0.0, "guidance_end": 1.0}


def payload(*units: dict[str, Any], key: str = "controlnet", **extra: Any) -> dict[str, Any]:
    return {"prompt": "a house", "steps": 2, "width": 64, "height": 64,
            "alwayson_scripts": {key: {"args": list(units)}}, **extra}


# -- txt2img / img2img units --------------------------------------------------------------------------


async def test_the_tutorial_payload(client: httpx.AsyncClient, engine: FakeEngine) -> None:
    r = await client.post(URL, json=payload(TUTORIAL))
    assert r.status_code == 200, r.text
    (unit,) = engine.calls[-1].controlnets
    assert unit == ControlNetUnit(model="control_canny", image=unit.image, module="canny")
    assert unit.image is not None and unit.image.startswith("img_")
    (pair,) = engine.inputs[-1].controls(engine.calls[-1])
    assert pair[0] == unit and pair[1] is not None and pair[1].size == (64, 64) and pair[2] is None
    assert np.array_equal(np.asarray(pair[1].convert("RGB")), np.asarray(square()))


async def test_every_field_in_its_wire_forms(client: httpx.AsyncClient, engine: FakeEngine) -> None:
    mask = png_b64(Image.new("L", (64, 64), 255))
    units = [
        {**TUTORIAL, "model": "control_canny [0123abcd]", "module": "invert (from white bg & black line)",
         "weight": 1.5, "guidance_start": 0.2, "guidance_end": 0.8, "resize_mode": "Just Resize",
         "control_mode": "My prompt is more important", "processor_res": 256, "threshold_a": 50,
         "threshold_b": 150, "pixel_perfect": True, "mask": "data:image/png;base64," + mask},
        {"input_image": "data:image/png;base64," + IMAGE, "model": "CONTROL_CANNY", "resize_mode": 2,
         "control_mode": 2, "module": "none", "threshold_a": -1, "processor_res": -1},
        {**TUTORIAL, "resize_mode": "Inner Fit (Scale to Fit)",
         "control_mode": "ControlNet is more important"},
        {**TUTORIAL, "resize_mode": "Outer Fit (Shrink to Fit)", "control_mode": 1, "low_vram": True,
         "hr_option": "Both"},
        {**TUTORIAL, "enabled": False, "model": "not even checked"},
    ]
    r = await client.post(URL, json=payload(*units, key="ControlNet"))
    assert r.status_code == 200, r.text
    first, second, third, fourth = engine.calls[-1].controlnets
    assert first.model_dump(exclude={"image", "mask"}) == {
        "model": "control_canny", "module": "invert", "weight": 1.5, "guidance_start": 0.2,
        "guidance_end": 0.8, "control_mode": ControlMode.PROMPT, "resize_mode": ControlResize.JUST_RESIZE,
        "processor_res": 256, "threshold_a": 50.0, "threshold_b": 150.0, "pixel_perfect": True,
    }  # fmt: skip
    assert first.mask is not None and first.image is not None
    assert (second.resize_mode, second.control_mode) == ("resize_and_fill", "controlnet")
    assert (second.module, second.processor_res, second.threshold_a) == ("none", 512, None)
    assert second.image == first.image  # the same picture, stored once
    assert third.resize_mode == ControlResize.CROP_AND_RESIZE and third.control_mode == ControlMode.CONTROLNET
    assert (fourth.resize_mode, fourth.control_mode) == (ControlResize.RESIZE_AND_FILL, ControlMode.PROMPT)


async def test_the_list_form_and_no_units(client: httpx.AsyncClient, engine: FakeEngine) -> None:
    body = payload()
    body["alwayson_scripts"] = {"controlnet": [TUTORIAL]}
    assert (await client.post(URL, json=body)).status_code == 200
    assert len(engine.calls[-1].controlnets) == 1
    r = await client.post(URL, json=payload(key="ControlNet"))  # webuiapi's {"args": []}
    assert r.status_code == 200, r.text
    assert engine.calls[-1].controlnets == ()


async def test_img2img_unit_without_image_uses_the_init_image(
    client: httpx.AsyncClient, engine: FakeEngine
) -> None:
    body = payload({"model": "control_canny", "module": "canny"}, init_images=[IMAGE], denoising_strength=0.5)
    r = await client.post("/sdapi/v1/img2img", json=body)
    assert r.status_code == 200, r.text
    (unit,) = engine.calls[-1].controlnets
    assert unit.image is None and unit.model == "control_canny"
    assert engine.calls[-1].init_images


async def test_family_matches_the_checkpoint(client: httpx.AsyncClient, engine: FakeEngine) -> None:
    body = payload({**TUTORIAL, "model": "control_xl_scribble"},
                   override_settings={"sd_model_checkpoint": "sd15"})
    r = await client.post(URL, json=body)
    assert r.status_code == 400, r.text
    assert r.json()["detail"].startswith("alwayson_scripts.controlnet.args.0.model:")
    assert "sdxl" in r.json()["detail"]
    ok = payload(TUTORIAL, override_settings={"sd_model_checkpoint": "sd15"})
    assert (await client.post(URL, json=ok)).status_code == 200


BAD_UNITS = [
    ({"model": "control_missing"}, "model", 404),
    ({"model": "None"}, "model", 400),
    ({"model": 5}, "model", 400),
    ({"module": "nope"}, "module", 400),
    ({"module": "depth"}, "module", 400),  # needs annotator weights this server lacks
    ({"weight": 2.5}, "weight", 400),
    ({"weight": "1"}, "weight", 400),
    ({"guidance_start": -0.1}, "guidance_start", 400),
    ({"guidance_end": 1.5}, "guidance_end", 400),
    ({"guidance_start": 0.8, "guidance_end": 0.2}, "guidance_start", 400),
    ({"resize_mode": 3}, "resize_mode", 400),
    ({"resize_mode": "Stretch"}, "resize_mode", 400),
    ({"control_mode": "Loud"}, "control_mode", 400),
    ({"control_mode": True}, "control_mode", 400),
    ({"processor_res": 10}, "processor_res", 400),
    ({"processor_res": 4096}, "processor_res", 400),
    ({"threshold_a": 1e9}, "threshold_a", 400),
    ({"pixel_perfect": "yes"}, "pixel_perfect", 400),
    ({"enabled": "true"}, "enabled", 400),
    ({"image": None}, "image", 400),  # txt2img has no init image to fall back on
    ({"image": "not base64!"}, "image", 400),
    ({"image": base64.b64encode(b"not an image").decode()}, "image", 400),
    ({"mask": 7}, "mask", 400),
]


@pytest.mark.parametrize(("change", "field", "status"), BAD_UNITS)
async def test_each_bad_value_names_its_field_and_queues_nothing(
    client: httpx.AsyncClient, engine: FakeEngine, change: dict[str, Any], field: str, status: int
) -> None:
    body = payload(TUTORIAL, {**TUTORIAL, **change})
    body["alwayson_scripts"]["controlnet"]["args"][1] = {
        k: v for k, v in body["alwayson_scripts"]["controlnet"]["args"][1].items()
        if not (k == "image" and change.get("image", "") is None)
    }
    r = await client.post(URL, json=body)
    assert r.status_code == status, r.text
    got = r.json()
    assert set(got) == {"error", "detail", "body", "errors"}
    assert re.match(rf"alwayson_scripts\.controlnet\.args\.1\.{field}\b", got["detail"]), got["detail"]
    jobs = (await client.get("/api/v1/jobs")).json()["jobs"]
    assert jobs == [] and engine.calls == []


async def test_too_many_units_and_bad_shapes(client: httpx.AsyncClient, engine: FakeEngine) -> None:
    r = await client.post(URL, json=payload(*[TUTORIAL] * 5))
    assert r.status_code == 400 and "max_controlnets" in r.json()["detail"]
    assert r.json()["detail"].startswith("alwayson_scripts.controlnet.args:")
    body = payload()
    body["alwayson_scripts"] = {"controlnet": {"args": "canny"}}
    assert (await client.post(URL, json=body)).status_code == 400
    body["alwayson_scripts"] = {"controlnet": {"args": ["canny"]}}
    r = await client.post(URL, json=body)
    assert r.status_code == 400 and r.json()["detail"].startswith("alwayson_scripts.controlnet.args.0:")
    body["alwayson_scripts"] = {"adetailer": {"args": []}}
    r = await client.post(URL, json=body)
    assert r.status_code >= 400 and "always on script adetailer not found" in r.json()["detail"]
    assert engine.calls == []


# -- the extension's routes -------------------------------------------------------------------------


async def test_version_models_modules_settings(client: httpx.AsyncClient) -> None:
    assert (await client.get("/controlnet/version")).json() == {"version": 2}
    models = (await client.get("/controlnet/model_list", params={"update": "true"})).json()["model_list"]
    assert [m.rsplit(" ", 1)[0] for m in models][:2] == ["control_canny", "control_xl_scribble"]
    assert all(len(m.rsplit(" ", 1)[1]) == len("[01234567]") for m in models)
    modules = (await client.get("/controlnet/module_list")).json()
    assert {"none", "canny", "invert", "scribble_xdog"} <= set(modules["module_list"])
    assert [s["name"] for s in modules["module_detail"]["canny"]["sliders"]][1:] == [
        "Canny Low Threshold", "Canny High Threshold"]
    labels = (await client.get("/controlnet/module_list", params={"alias_names": "true"})).json()
    assert "invert (from white bg & black line)" in labels["module_list"]
    assert (await client.get("/controlnet/settings")).json()["control_net_unit_count"] == 4


async def test_a_model_from_model_list_is_accepted(client: httpx.AsyncClient, engine: FakeEngine) -> None:
    name = (await client.get("/controlnet/model_list")).json()["model_list"][0]
    r = await client.post(URL, json=payload({**TUTORIAL, "model": name}))
    assert r.status_code == 200, r.text
    assert engine.calls[-1].controlnets[0].model == "control_canny"


async def test_detect_canny_gives_the_square_edges(client: httpx.AsyncClient) -> None:
    r = await client.post("/controlnet/detect", json={
        "controlnet_module": "canny", "controlnet_input_images": [IMAGE], "controlnet_processor_res": 64,
        "controlnet_threshold_a": 100, "controlnet_threshold_b": 200,
    })  # fmt: skip
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["info"] == "Success" and len(body["images"]) == 1
    edges = np.asarray(Image.open(io.BytesIO(base64.b64decode(body["images"][0]))).convert("L"))
    assert edges.shape == (64, 64)
    assert edges[32, 32] == 0 and edges[2, 2] == 0  # inside and outside the square: no edge
    assert edges[14:19, 32].max() == 255 and edges[32, 14:19].max() == 255  # its border: edges


async def test_detect_refusals(client: httpx.AsyncClient) -> None:
    r = await client.post("/controlnet/detect", json={"controlnet_module": "canny"})
    assert r.status_code == 400 and r.json()["detail"].startswith("controlnet_input_images:")
    r = await client.post("/controlnet/detect", json={"controlnet_module": "nope",
                                                      "controlnet_input_images": [IMAGE]})
    assert r.status_code == 400 and r.json()["detail"].startswith("controlnet_module:")
    r = await client.post("/controlnet/detect", json={"controlnet_module": "canny",
                                                      "controlnet_input_images": ["xx"]})
    assert r.status_code == 400 and r.json()["detail"].startswith("controlnet_input_images.0")
    r = await client.post("/controlnet/detect", json={"controlnet_input_images": [IMAGE] * 17})
    assert r.status_code == 422


async def test_scripts_list_controlnet(client: httpx.AsyncClient) -> None:
    scripts = (await client.get("/sdapi/v1/scripts")).json()
    assert "controlnet" in scripts["txt2img"] and "controlnet" in scripts["img2img"]
    assert "controlnet m2m" not in scripts["txt2img"]
    info = (await client.get("/sdapi/v1/script-info")).json()
    cn = [s for s in info if s["name"] == "controlnet"]
    assert [s["is_img2img"] for s in cn] == [False, True] and all(s["is_alwayson"] for s in cn)


# -- webuiapi, unchanged ----------------------------------------------------------------------------


@pytest.fixture
def webui(settings: Settings, engine: FakeEngine, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    import webuiapi

    monkeypatch.setattr(webuiapi.WebUIApi, "check_extensions", lambda self: None)  # no network here
    api = webuiapi.WebUIApi(baseurl="http://sdgate/sdapi/v1", sampler="Euler", steps=2)
    monkeypatch.undo()
    with TestClient(create_app(settings, engine=engine), base_url="http://sdgate") as http:
        api.session = http
        api.check_extensions()
        yield api


def test_webuiapi_controlnet_unit(webui: Any, engine: FakeEngine) -> None:
    import webuiapi

    assert webui.has_controlnet is False  # it looks for "controlnet m2m", which is not listed
    assert webui.controlnet_version() == 2
    assert webui.controlnet_model_list()[0].startswith("control_canny [")
    assert "canny" in webui.controlnet_module_list()
    unit = webuiapi.ControlNetUnit(image=square(), module="canny", model=webui.controlnet_model_list()[0],
                                   weight=0.8, guidance_end=0.9, control_mode=1)
    # A fresh alwayson_scripts each call: webuiapi writes the units into its shared default dict,
    # which would send them with every later call of the process (other tests') otherwise.
    result = webui.txt2img(prompt="a house", width=64, height=64, seed=1, controlnet_units=[unit],
                           alwayson_scripts={})
    assert len(result.images) == 1
    (got,) = engine.calls[-1].controlnets
    assert got.model_dump(exclude={"image"}) == {
        "model": "control_canny", "mask": None, "module": "canny", "weight": 0.8, "guidance_start": 0.0,
        "guidance_end": 0.9, "control_mode": ControlMode.PROMPT, "resize_mode": ControlResize.RESIZE_AND_FILL,
        "processor_res": 512, "threshold_a": 64.0, "threshold_b": 64.0, "pixel_perfect": False,
    }  # fmt: skip
    result = webui.img2img(images=[square()], prompt="a house", width=64, height=64, seed=1,
                           controlnet_units=[webuiapi.ControlNetUnit(module="none", model="control_canny")],
                           alwayson_scripts={})
    assert len(result.images) == 1
    assert engine.calls[-1].controlnets[0].image is None  # "": the init image
    detected = webui.controlnet_detect([square()], module="canny", processor_res=64)
    assert detected.info == "Success" and detected.images[0].size == (64, 64)


async def test_a_script_runs_every_job_with_the_units(client: httpx.AsyncClient, engine: FakeEngine) -> None:
    body = payload(TUTORIAL, script_name="X/Y/Z Plot",
                   script_args=[4, "1,2", [], 0, "", [], 0, "", [], True, True])  # X: Steps 1, 2
    r = await client.post(URL, json=body)
    assert r.status_code == 200, r.text
    assert [c.steps for c in engine.calls] == [1, 2]
    units = [c.controlnets for c in engine.calls]
    assert units[0] == units[1] and units[0][0].model == "control_canny" and units[0][0].image
