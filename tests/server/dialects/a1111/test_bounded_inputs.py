"""Issue 13 on A1111: every number bounded where it enters, floats finite, no bool for a number;
a refusal is a 4xx naming the field, in A1111's shapes, and leaves no job behind."""

from __future__ import annotations

import json

import httpx
import pytest

from sdgate.server.dialects.a1111.protocol import MAX_SIDE, Img2ImgRequest, Txt2ImgRequest
from tests.fakes import FakeEngine

TXT2IMG = "/sdapi/v1/txt2img"


def _not_json(name: str) -> None:
    raise AssertionError(f"{name} in a response body")


def _raw(body: str) -> dict:
    return {"content": body.encode(), "headers": {"content-type": "application/json"}}


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ('{"enable_hr": true, "hr_scale": NaN}', "hr_scale"),
        ('{"enable_hr": true, "hr_scale": 1e6}', "hr_scale"),
        ('{"enable_hr": true, "denoising_strength": NaN}', "denoising_strength"),
        ('{"cfg_scale": Infinity}', "cfg_scale"),
        ('{"cfg_scale": -Infinity}', "cfg_scale"),
        ('{"subseed_strength": NaN}', "subseed_strength"),
        ('{"eta": 1e400}', "eta"),
        ('{"s_noise": NaN}', "s_noise"),
        ('{"seed": false}', "seed"),
        ('{"steps": true}', "steps"),
        ('{"seed": -5}', "seed"),
        ('{"seed": "abc"}', "seed"),
        ('{"width": 500}', "width"),
        ('{"hr_resize_x": 65536, "enable_hr": true}', "hr_resize_x"),
        ('{"hr_second_pass_steps": 100000, "enable_hr": true}', "hr_second_pass_steps"),
        ('{"batch_size": 100000}', "batch_size"),
        ('{"styles": [' + ",".join(['"s"'] * 100) + "]}", "styles"),
        ('{"override_settings": {"CLIP_stop_at_last_layers": NaN}}', "override_settings"),
        ('{"override_settings": {"eta_noise_seed_delta": -5}}', "override_settings"),
        ('{"restore_faces": 1}', "restore_faces"),
    ],
)
async def test_non_finite_and_out_of_range_numbers_are_a_422_naming_the_field(
    client: httpx.AsyncClient, engine: FakeEngine, body: str, field: str
) -> None:
    r = await client.post(TXT2IMG, **_raw(body))
    assert r.status_code == 422, r.text
    detail = r.json()["detail"]
    assert detail[0]["loc"][:2] == ["body", field], detail
    json.loads(r.text, parse_constant=_not_json)  # the error body is strict JSON
    jobs = await client.get("/api/v1/jobs")
    assert jobs.status_code != 200 or not jobs.json().get("data"), jobs.text
    assert engine.calls == []


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ('{"init_images": ["x"], "denoising_strength": NaN}', "denoising_strength"),
        ('{"init_images": ["x"], "image_cfg_scale": Infinity}', "image_cfg_scale"),
        ('{"init_images": ["x"], "mask_blur": -1}', "mask_blur"),
        ('{"init_images": ["x"], "initial_noise_multiplier": NaN}', "initial_noise_multiplier"),
        ('{"init_images": [' + ",".join(['"x"'] * 65) + "]}", "init_images"),
    ],
)
async def test_img2img_numbers_are_bounded(
    client: httpx.AsyncClient, engine: FakeEngine, body: str, field: str
) -> None:
    r = await client.post("/sdapi/v1/img2img", **_raw(body))
    assert r.status_code == 422, r.text
    assert r.json()["detail"][0]["loc"][:2] == ["body", field]
    assert engine.calls == []


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ('{"image": "x", "upscaling_resize": NaN}', "upscaling_resize"),
        ('{"image": "x", "upscaling_resize": 1e6}', "upscaling_resize"),
        ('{"image": "x", "upscaling_resize_w": 100000, "resize_mode": 1}', "upscaling_resize_w"),
        ('{"image": "x", "gfpgan_visibility": NaN}', "gfpgan_visibility"),
        ('{"image": "x", "extras_upscaler_2_visibility": 2}', "extras_upscaler_2_visibility"),
    ],
)
async def test_extras_numbers_are_bounded(client: httpx.AsyncClient, body: str, field: str) -> None:
    r = await client.post("/sdapi/v1/extra-single-image", **_raw(body))
    assert r.status_code == 422, r.text
    assert r.json()["detail"][0]["loc"][:2] == ["body", field]


async def test_a1111_clients_numeric_strings_and_integral_floats_still_work(
    client: httpx.AsyncClient,
) -> None:
    r = await client.post(
        TXT2IMG, json={"steps": "2", "width": "64", "height": 64.0, "seed": "7", "cfg_scale": "5"}
    )
    assert r.status_code == 200, r.text


async def test_a_body_that_is_not_text_is_a_400_in_a1111_shape(client: httpx.AsyncClient) -> None:
    r = await client.post("/sdapi/v1/png-info", **{**_raw(""), "content": b"\xff\xfe\x00binary"})
    assert r.status_code in (400, 422), r.text
    if r.status_code == 400:
        assert set(r.json()) == {"error", "detail", "body", "errors"}


def test_the_schema_states_the_limits() -> None:
    txt = Txt2ImgRequest.model_json_schema()["properties"]
    assert txt["width"]["maximum"] == MAX_SIDE and txt["width"]["multipleOf"] == 8
    assert txt["steps"]["minimum"] == 1 and txt["steps"]["maximum"] >= 1
    assert txt["hr_scale"]["maximum"] == 8.0
    assert txt["alwayson_scripts"]["maxProperties"] == 1  # controlnet, the one always-on script
    assert txt["prompt"]["maxLength"] > 0
    img = Img2ImgRequest.model_json_schema()["properties"]
    assert img["init_images"]["anyOf"][0]["maxItems"] > 0


async def test_openapi_documents_the_a1111_error_bodies(client: httpx.AsyncClient) -> None:
    spec = (await client.get("/openapi.json")).json()
    op = spec["paths"]["/sdapi/v1/txt2img"]["post"]
    assert {"200", "400", "404", "413", "422", "429", "507"} <= set(op["responses"])
    bad = op["responses"]["400"]["content"]["application/json"]["schema"]["$ref"]
    assert bad.endswith("/A1111Error")
    interrogate = spec["paths"]["/sdapi/v1/interrogate"]["post"]
    assert "404" in interrogate["responses"]
    options = spec["paths"]["/sdapi/v1/options"]["post"]["requestBody"]["content"]["application/json"][
        "schema"
    ]
    assert options["additionalProperties"] is False
    assert options["properties"]["CLIP_stop_at_last_layers"] == {
        "type": "integer",
        "minimum": 1,
        "maximum": 12,
    }


def _nested(depth: int) -> dict:
    value: dict = {}
    for _ in range(depth):
        value = {"a": value}
    return value


@pytest.mark.parametrize("field", ["override_settings", "comments", "script_args", "alwayson_scripts"])
async def test_deeply_nested_free_form_fields_are_a_422_and_no_job(
    client: httpx.AsyncClient, field: str
) -> None:
    # Found by benchmarks/hostile_inputs.py: 500 levels were a 500 after the job was created.
    before = (await client.get("/api/v1/jobs", params={"limit": 100})).json()["jobs"]
    value = [_nested(500)] if field == "script_args" else _nested(500)
    r = await client.post("/sdapi/v1/txt2img", json={"prompt": "x", "width": 64, "height": 64, "steps": 1,
                                                      field: value})
    assert r.status_code == 422, r.text
    assert r.json()["detail"][0]["loc"][:2] == ["body", field]
    assert (await client.get("/api/v1/jobs", params={"limit": 100})).json()["jobs"] == before
