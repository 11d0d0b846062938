"""refiner_checkpoint / refiner_switch_at / hr_checkpoint_name through /sdapi/v1/txt2img and img2img."""

from __future__ import annotations

import base64
import io

import httpx
import pytest
from PIL import Image

from tests.fakes import FakeEngine

URL = "/sdapi/v1/txt2img"
SMALL = {"prompt": "x", "steps": 2, "width": 64, "height": 64}


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"refiner_checkpoint": "nope", "refiner_switch_at": 0.8}, "refiner_checkpoint"),
        ({"refiner_checkpoint": "alpha"}, "refiner_switch_at"),
        ({"refiner_checkpoint": "alpha", "refiner_switch_at": 1.0}, "refiner_switch_at"),
        ({"refiner_checkpoint": "alpha", "refiner_switch_at": 0}, "refiner_switch_at"),
        ({"enable_hr": True, "hr_checkpoint_name": "nope"}, "hr_checkpoint_name"),
    ],
)
async def test_bad_values_are_400s_naming_the_field(
    client: httpx.AsyncClient, engine: FakeEngine, payload: dict, field: str
) -> None:
    r = await client.post(URL, json={**SMALL, **payload})
    assert r.status_code == 400, r.text
    assert r.json()["detail"].startswith(f"{field}:"), r.json()
    assert engine.calls == []


async def test_a_switch_point_out_of_range_is_a_schema_422(
    client: httpx.AsyncClient, engine: FakeEngine
) -> None:
    r = await client.post(URL, json={**SMALL, "refiner_checkpoint": "alpha", "refiner_switch_at": -0.5})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "refiner_switch_at"]
    assert engine.calls == []


async def test_refiner_and_hires_checkpoint_reach_the_engine_by_catalog_name(
    client: httpx.AsyncClient, engine: FakeEngine
) -> None:
    payload = {**SMALL, "refiner_checkpoint": "sub/beta.safetensors", "refiner_switch_at": 0.8,
               "enable_hr": True, "hr_checkpoint_name": "alpha.safetensors"}  # fmt: skip
    r = await client.post(URL, json=payload)
    assert r.status_code == 200, r.text
    call = engine.calls[0]
    assert (call.refiner, call.refiner_switch_at) == ("sub_beta", 0.8)
    assert call.hires is not None and call.hires.checkpoint == "alpha"


@pytest.mark.parametrize("off", [None, "", "None"])
async def test_refiner_off_values(client: httpx.AsyncClient, engine: FakeEngine, off: str | None) -> None:
    r = await client.post(URL, json={**SMALL, "refiner_checkpoint": off, "refiner_switch_at": 0.8})
    assert r.status_code == 200, r.text
    assert engine.calls[0].refiner is None and engine.calls[0].refiner_switch_at is None


@pytest.mark.parametrize("same", [None, "", "Use same checkpoint"])
async def test_hires_same_checkpoint(client: httpx.AsyncClient, engine: FakeEngine, same: str | None) -> None:
    r = await client.post(URL, json={**SMALL, "enable_hr": True, "hr_checkpoint_name": same})
    assert r.status_code == 200, r.text
    assert engine.calls[0].hires is not None and engine.calls[0].hires.checkpoint is None


async def test_img2img_takes_a_refiner(client: httpx.AsyncClient, engine: FakeEngine) -> None:
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), "red").save(buf, format="PNG")
    image = base64.b64encode(buf.getvalue()).decode()
    payload = {**SMALL, "init_images": [image], "refiner_checkpoint": "alpha", "refiner_switch_at": 0.5}
    r = await client.post("/sdapi/v1/img2img", json=payload)
    assert r.status_code == 200, r.text
    assert engine.calls[0].refiner == "alpha"
    bad = await client.post("/sdapi/v1/img2img", json={**payload, "refiner_checkpoint": "nope"})
    assert bad.status_code == 400 and bad.json()["detail"].startswith("refiner_checkpoint:")
