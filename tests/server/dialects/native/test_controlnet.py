"""The native API's ``controlnets`` field: units as ``ControlNetUnit``s (the fake engine receives
them), echoed in the job's request, images by base64 or upload id, bad values refused naming the
field with nothing queued, and the field in the OpenAPI document."""

from __future__ import annotations

import base64
import io
import json
import struct
from pathlib import Path
from typing import Any

import httpx
import pytest

from sdgate.core.requests import ControlMode, ControlNetUnit, ControlResize
from tests.fakes import FakeEngine, write_fake_checkpoint
from tests.server.dialects.native.conftest import png_b64, submit, wait_state


def write_controlnet(path: Path, width: int = 768) -> None:
    shapes = {"input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": [320, width]}
    header = {k: {"dtype": "F16", "shape": s, "data_offsets": [0, 0]} for k, s in shapes.items()}
    data = json.dumps(header).encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(struct.pack("<Q", len(data)) + data)


@pytest.fixture
def models_dir(tmp_path: Path) -> Path:
    root = tmp_path / "models"
    write_fake_checkpoint(root / "Stable-diffusion" / "alpha.safetensors")
    write_controlnet(root / "ControlNet" / "control_canny.safetensors")
    write_controlnet(root / "controlnet" / "control_scribble.pth")
    return root


IMAGE = png_b64("white")


async def test_units_reach_the_engine_and_are_echoed(api: httpx.AsyncClient, engine: FakeEngine) -> None:
    job = await submit(api, prompt="a house", width=64, height=64, steps=2, controlnets=[
        {"model": "control_canny", "image": IMAGE, "module": "canny", "weight": 0.5, "guidance_end": 0.75,
         "control_mode": "prompt", "resize_mode": "just_resize", "processor_res": 256, "threshold_a": 50,
         "threshold_b": 150, "pixel_perfect": True, "mask": png_b64("white", mode="L")},
        {"model": "control_scribble [deadbeef]", "image": IMAGE,
         "module": "invert (from white bg & black line)"},
    ])  # fmt: skip
    done = await wait_state(api, job["id"])
    assert done["state"] == "succeeded", done
    first, second = engine.calls[-1].controlnets
    assert first == ControlNetUnit(
        model="control_canny", image=first.image, mask=first.mask, module="canny", weight=0.5,
        guidance_end=0.75, control_mode=ControlMode.PROMPT, resize_mode=ControlResize.JUST_RESIZE,
        processor_res=256, threshold_a=50.0, threshold_b=150.0, pixel_perfect=True,
    )  # fmt: skip
    assert first.image and first.mask and first.image.startswith("img_")
    assert second == ControlNetUnit(model="control_scribble", image=first.image, module="invert")
    echoed = done["request"]["controlnets"]
    assert echoed[0]["model"] == "control_canny" and echoed[0]["image"] == first.image
    assert echoed[1]["module"] == "invert" and echoed[1]["resize_mode"] == "crop_and_resize"
    (got,) = [p for p in engine.inputs[-1].controls(engine.calls[-1])][:1]
    assert got[1] is not None and got[1].size == (64, 64) and got[2] is not None


async def test_an_upload_id_and_the_init_image(api: httpx.AsyncClient, engine: FakeEngine) -> None:
    up = await api.post("/api/v1/uploads", content=base64.b64decode(IMAGE),
                        headers={"content-type": "image/png"})
    assert up.status_code in (200, 201), up.text
    upload = up.json()["id"]
    job = await submit(api, prompt="x", width=64, height=64, steps=2, init_image=png_b64("red"),
                       controlnets=[{"model": "control_canny", "image": upload}, {"model": "control_canny"}])
    done = await wait_state(api, job["id"])
    assert done["state"] == "succeeded", done
    first, second = engine.calls[-1].controlnets
    assert first.image == upload and second.image is None  # the init image


BAD = [
    ({"model": "nope"}, "controlnets[0].model", 404),
    ({"module": "nope"}, "controlnets[0].module", 400),
    ({"image": None}, "controlnets[0].image", 400),
    ({"image": "!!"}, "controlnets[0].image", 400),
    ({"image": "img_" + "1" * 24}, "controlnets[0].image", 404),
    ({"guidance_start": 0.9, "guidance_end": 0.1}, "controlnets[0].guidance_start", 400),
    ({"weight": 3}, "controlnets.0.weight", 422),
    ({"weight": True}, "controlnets.0.weight", 422),
    ({"control_mode": "Balanced"}, "controlnets.0.control_mode", 422),
    ({"processor_res": 32}, "controlnets.0.processor_res", 422),
    ({"threshold_a": -1}, "controlnets.0.threshold_a", 422),
    ({"low_vram": True}, "controlnets.0.low_vram", 422),
]


@pytest.mark.parametrize(("change", "field", "status"), BAD)
async def test_bad_values_name_the_field_and_queue_nothing(
    api: httpx.AsyncClient, engine: FakeEngine, change: dict[str, Any], field: str, status: int
) -> None:
    unit = {"model": "control_canny", "image": IMAGE, **change}
    r = await api.post("/api/v1/jobs", json={"prompt": "x", "width": 64, "height": 64, "controlnets": [unit]})
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error.get("field") == field or field in json.dumps(error), error
    assert (await api.get("/api/v1/jobs")).json()["jobs"] == [] and engine.calls == []


async def test_too_many_units(api: httpx.AsyncClient, engine: FakeEngine) -> None:
    unit = {"model": "control_canny", "image": IMAGE}
    r = await api.post("/api/v1/jobs", json={"prompt": "x", "controlnets": [unit] * 5})
    assert r.status_code == 400 and "max_controlnets" in r.json()["error"]["message"]
    assert engine.calls == []


async def test_openapi_documents_the_field(api: httpx.AsyncClient) -> None:
    schema = (await api.get("/openapi.json")).json()["components"]["schemas"]
    field = schema["JobCreate"]["properties"]["controlnets"]
    assert field["maxItems"] == 16 and "max_controlnets" in field["description"]
    unit = schema["ControlNetIn"]["properties"]
    assert {"model", "image", "mask", "module", "weight", "guidance_start", "guidance_end", "control_mode",
            "resize_mode", "processor_res", "threshold_a", "threshold_b", "pixel_perfect"} == set(unit)
    assert unit["weight"]["maximum"] == 2


def _square_png(side: int = 128) -> bytes:
    from PIL import Image, ImageDraw

    picture = Image.new("RGB", (side, side), "black")
    ImageDraw.Draw(picture).rectangle((side // 4, side // 4, 3 * side // 4, 3 * side // 4), fill="white")
    out = io.BytesIO()
    picture.save(out, format="PNG")
    return out.getvalue()


def _map(body: dict[str, Any]) -> Any:
    import numpy as np
    from PIL import Image

    prefix = "data:image/png;base64,"
    assert body["image"].startswith(prefix)
    picture = Image.open(io.BytesIO(base64.b64decode(body["image"][len(prefix):])))
    assert picture.size == (body["width"], body["height"])
    return np.asarray(picture.convert("L"))


async def test_the_listings_name_what_a_unit_may_use(api: httpx.AsyncClient) -> None:
    names = [c["name"] for c in (await api.get("/api/v1/controlnets")).json()]
    assert {"control_canny", "control_scribble"} <= set(names)
    found = {p["name"]: p for p in (await api.get("/api/v1/controlnet/preprocessors")).json()}
    assert {"none", "canny", "invert"} <= set(found)
    assert found["canny"]["sliders"] == [
        {"name": "Canny Low Threshold", "value": 100, "min": 1, "max": 255, "step": 1},
        {"name": "Canny High Threshold", "value": 200, "min": 1, "max": 255, "step": 1},
    ]
    assert found["invert"]["label"] == "invert (from white bg & black line)"
    assert found["canny"]["uses_resolution"] and not found["none"]["uses_resolution"]


async def test_detect_shows_the_control_map_and_stores_nothing(
    api: httpx.AsyncClient, native_settings: Any
) -> None:
    png = _square_png()
    stored_before = sorted(p.name for p in native_settings.images_dir.rglob("*") if p.is_file())
    r = await api.post("/api/v1/controlnet/detect", json={
        "module": "canny", "image": base64.b64encode(png).decode(), "processor_res": 128})
    assert r.status_code == 200, r.text
    edges = _map(r.json())
    assert r.json()["module"] == "canny" and edges.shape == (128, 128)
    assert edges[30:35, 40:88].max() == 255 and edges[64, 64] == 0 and edges[5, 5] == 0  # its outline
    assert sorted(p.name for p in native_settings.images_dir.rglob("*") if p.is_file()) == stored_before
    # An upload id does as well; "invert" turns the picture over.
    upload = (await api.post("/api/v1/uploads", content=png, headers={"Content-Type": "image/png"})).json()
    r = await api.post("/api/v1/controlnet/detect", json={"module": "invert", "image": upload["id"]})
    inverted = _map(r.json())
    assert inverted[64, 64] == 0 and inverted[5, 5] == 255


@pytest.mark.parametrize(("body", "field"), [
    ({"module": "no_such_module", "image": IMAGE}, "module"),
    ({"module": "canny", "image": "not base64 at all!"}, "image"),
    ({"module": "canny", "image": "img_" + "0" * 64}, "image"),
    ({"module": "canny", "image": IMAGE, "processor_res": 10**9}, "processor_res"),
    ({"module": "canny", "image": IMAGE, "threshold_a": "NaN"}, "threshold_a"),
    (b'{"module": "can\\ud800ny", "image": "aGk="}', "module"),  # a lone surrogate, sent as written
    ({"module": "canny", "image": "A" * (50 << 20)}, "image"),  # 50 MB that is no image
    ({"module": "canny", "image": IMAGE, "processor_res": 1e308}, "processor_res"),
])  # fmt: skip
async def test_detect_refuses_bad_input_naming_the_field(
    api: httpx.AsyncClient, body: dict[str, Any] | bytes, field: str
) -> None:
    if isinstance(body, bytes):  # httpx's encoder refuses a lone surrogate
        r = await api.post("/api/v1/controlnet/detect", content=body,
                           headers={"Content-Type": "application/json"})
    else:
        r = await api.post("/api/v1/controlnet/detect", json=body)
    assert 400 <= r.status_code < 500 and r.status_code != 405, r.text
    assert field in json.dumps(r.json()), r.text
