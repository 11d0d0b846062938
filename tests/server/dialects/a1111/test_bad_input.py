"""Bad input gets a 4xx naming the field, in A1111's shapes; the server keeps serving."""

from __future__ import annotations

import httpx
import pytest

from sdgate.settings import Settings

URL = "/sdapi/v1/txt2img"


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"width": 4096, "height": 4096}, "width"),
        ({"batch_size": 16, "n_iter": 8}, "batch_size"),
        ({"sampler_name": "No Such Sampler"}, "sampler_name"),
        ({"enable_hr": True, "hr_checkpoint_name": "other"}, "hr_checkpoint_name"),
        ({"enable_hr": True, "hr_sampler_name": "No Such Sampler"}, "hr_sampler_name"),
        ({"script_name": "x/y/z plot"}, "script_name"),
        ({"alwayson_scripts": {"adetailer": {"args": []}}}, "alwayson_scripts"),
        ({"override_settings": {"sd_model_checkpoint": "nope"}}, "override_settings.sd_model_checkpoint"),
    ],
)
async def test_out_of_range_values_name_the_field(
    client: httpx.AsyncClient, payload: dict, field: str
) -> None:
    r = await client.post(URL, json={"steps": 1, **payload})
    assert 400 <= r.status_code < 500, r.text
    body = r.json()
    assert set(body) == {"error", "detail", "body", "errors"}
    assert field.split(".")[-1] in body["detail"] or body["detail"].startswith(field), body


@pytest.mark.parametrize(
    ("payload", "loc"),
    [
        ({"prompt": ["a", "b"]}, ["body", "prompt"]),
        # Limits the schema states (issue 13): FastAPI's 422 naming the field.
        ({"width": 500}, ["body", "width"]),
        ({"height": 4}, ["body", "height"]),
        ({"width": 8192, "height": 8192}, ["body", "width"]),
        ({"steps": 0}, ["body", "steps"]),
        ({"steps": 1001}, ["body", "steps"]),
        ({"batch_size": 0}, ["body", "batch_size"]),
        ({"n_iter": 0}, ["body", "n_iter"]),
        ({"cfg_scale": 1e9}, ["body", "cfg_scale"]),
        ({"seed": "abc"}, ["body", "seed"]),
        ({"seed": -5}, ["body", "seed"]),
        ({"seed": 2**64}, ["body", "seed"]),
        ({"override_settings": {"CLIP_stop_at_last_layers": "x"}}, ["body", "override_settings"]),
        ({"steps": "many"}, ["body", "steps"]),
        ({"width": 1.5}, ["body", "width"]),
        ({"cfg_scale": {"x": 1}}, ["body", "cfg_scale"]),
    ],
)
async def test_schema_errors_keep_fastapis_422(client: httpx.AsyncClient, payload: dict, loc: list) -> None:
    r = await client.post(URL, json=payload)
    assert r.status_code == 422
    detail = r.json()["detail"]
    assert isinstance(detail, list)
    assert detail[0]["loc"] == loc


async def test_malformed_json(client: httpx.AsyncClient) -> None:
    r = await client.post(URL, content=b'{"prompt": "x",', headers={"content-type": "application/json"})
    assert r.status_code == 422
    assert r.json()["detail"][0]["type"] == "json_invalid"


async def test_numeric_strings_are_coerced_like_pydantic_v1(client: httpx.AsyncClient) -> None:
    r = await client.post(URL, json={"steps": "2", "width": "64", "height": 64.0})
    assert r.status_code == 200, r.text


async def test_body_too_large_is_413_in_a1111_shape(settings: Settings, tmp_path) -> None:
    from sdgate.server.app import create_app
    from tests.fakes import FakeEngine

    small = settings.model_copy(update={"max_body_bytes": 1000})
    app = create_app(small, engine=FakeEngine())
    transport = httpx.ASGITransport(app=app)
    client = httpx.AsyncClient(transport=transport, base_url="http://t")
    async with app.router.lifespan_context(app), client as c:
        r = await c.post(URL, json={"prompt": "x" * 5000})
        assert r.status_code == 413
        assert r.json()["error"] == "PayloadTooLarge"

        async def chunks():
            for _ in range(10):
                yield b" " * 500

        r2 = await c.post(URL, content=chunks(), headers={"content-type": "application/json"})
        assert r2.status_code == 413
        assert r2.json()["error"] == "PayloadTooLarge"
        ok = await c.post(URL, json={"steps": 1, "width": 64, "height": 64})
        assert ok.status_code == 200


async def test_unknown_route_and_method_keep_fastapi_bodies(client: httpx.AsyncClient) -> None:
    r = await client.get("/sdapi/v1/nope")
    assert (r.status_code, r.json()) == (404, {"detail": "Not Found"})
    r = await client.get("/sdapi/v1/txt2img")
    assert (r.status_code, r.json()) == (405, {"detail": "Method Not Allowed"})


async def test_unexpected_error_is_a_500_in_a1111_shape_with_a_request_id(settings: Settings) -> None:
    from fastapi import APIRouter

    from sdgate.server.app import create_app
    from sdgate.server.dialects.a1111.router import A1111Route
    from tests.fakes import FakeEngine

    app = create_app(settings, engine=FakeEngine())
    broken = APIRouter(route_class=A1111Route)

    @broken.get("/sdapi/v1/broken")
    async def explode() -> None:
        raise RuntimeError("secret internals")

    app.include_router(broken)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    client = httpx.AsyncClient(transport=transport, base_url="http://t")
    async with app.router.lifespan_context(app), client as c:
        r = await c.get("/sdapi/v1/broken", headers={"X-Request-ID": "req-1"})
        assert r.status_code == 500
        assert r.headers["x-request-id"] == "req-1"
        assert r.json()["error"] == "SdgateError"
        assert "secret internals" not in r.text and "Traceback" not in r.text
        assert (await c.get("/sdapi/v1/samplers")).status_code == 200
