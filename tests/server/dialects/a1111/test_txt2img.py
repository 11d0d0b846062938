"""/sdapi/v1/txt2img through the real app, store and worker, on the fake engine."""

from __future__ import annotations

import asyncio
import base64
import io
import json

import httpx
import pytest
from PIL import Image

from tests.fakes import FakeEngine


def decode(b64: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(b64)))


async def test_minimal_payload_uses_a1111_defaults(client: httpx.AsyncClient, engine: FakeEngine) -> None:
    r = await client.post("/sdapi/v1/txt2img", json={"prompt": "a red circle", "steps": 3})
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"images", "parameters", "info"}
    assert len(body["images"]) == 1
    image = decode(body["images"][0])
    assert image.size == (512, 512)
    assert "a red circle" in image.info["parameters"]
    info = json.loads(body["info"])
    assert isinstance(body["info"], str)
    assert list(info)[:6] == ["prompt", "all_prompts", "negative_prompt", "all_negative_prompts", "seed",
                              "all_seeds"]
    assert info["version"] == "v1.10.1"
    assert body["parameters"]["seed"] == -1  # an echo of the request, not the resolved value
    assert 0 <= info["seed"] < 4294967295
    assert engine.calls[0].sampler == "Euler"  # sampler_index's API default


async def test_empty_body_is_valid(client: httpx.AsyncClient, engine: FakeEngine) -> None:
    r = await client.post("/sdapi/v1/txt2img", json={})
    assert r.status_code == 200, r.text
    assert engine.calls[0].steps == 50


async def test_body_without_content_type(client: httpx.AsyncClient) -> None:
    payload = json.dumps({"prompt": "x", "steps": 2, "width": 64, "height": 64}).encode()
    r = await client.post("/sdapi/v1/txt2img", content=payload)
    assert r.status_code == 200, r.text
    assert decode(r.json()["images"][0]).size == (64, 64)


async def test_batch_and_iterations_use_consecutive_seeds(client: httpx.AsyncClient) -> None:
    r = await client.post(
        "/sdapi/v1/txt2img",
        json={"prompt": "x", "seed": 1000, "batch_size": 2, "n_iter": 2, "steps": 2, "width": 64,
              "height": 64},
    )
    assert r.status_code == 200, r.text
    info = json.loads(r.json()["info"])
    assert info["all_seeds"] == [1000, 1001, 1002, 1003]
    assert len(r.json()["images"]) == 4
    assert len(info["infotexts"]) == 4
    assert "Seed: 1002" in info["infotexts"][2]


async def test_seed_beyond_int64_is_kept(client: httpx.AsyncClient) -> None:
    seed = 2**64 - 1
    r = await client.post("/sdapi/v1/txt2img", json={"seed": seed, "steps": 1, "width": 64, "height": 64,
                                                     "batch_size": 2})
    assert r.status_code == 200, r.text
    assert json.loads(r.json()["info"])["all_seeds"] == [seed, 0]


async def test_old_combined_sampler_name(client: httpx.AsyncClient, engine: FakeEngine) -> None:
    r = await client.post("/sdapi/v1/txt2img", json={"sampler_name": "DPM++ 2M Karras", "steps": 1,
                                                     "width": 64, "height": 64})
    assert r.status_code == 200, r.text
    assert (engine.calls[0].sampler, engine.calls[0].scheduler) == ("DPM++ 2M", "karras")


async def test_send_images_false(client: httpx.AsyncClient) -> None:
    r = await client.post("/sdapi/v1/txt2img", json={"send_images": False, "steps": 1, "width": 64,
                                                     "height": 64})
    assert r.status_code == 200
    assert r.json()["images"] == []


async def test_request_id_is_echoed_or_created(client: httpx.AsyncClient) -> None:
    r = await client.get("/sdapi/v1/samplers", headers={"X-Request-ID": "abc-123"})
    assert r.headers["x-request-id"] == "abc-123"
    r2 = await client.get("/sdapi/v1/samplers")
    assert len(r2.headers["x-request-id"]) >= 16
    assert float(r2.headers["x-process-time"]) >= 0


async def test_eight_concurrent_clients_all_succeed(client: httpx.AsyncClient, engine: FakeEngine) -> None:
    async def one(i: int) -> httpx.Response:
        return await client.post("/sdapi/v1/txt2img", json={"prompt": f"slow {i}", "seed": i, "steps": 3,
                                                            "width": 64, "height": 64})

    responses = await asyncio.gather(*(one(i) for i in range(8)))
    assert [r.status_code for r in responses] == [200] * 8
    assert sorted(json.loads(r.json()["info"])["seed"] for r in responses) == list(range(8))
    assert len(engine.calls) == 8


async def test_failed_job_fails_alone(client: httpx.AsyncClient) -> None:
    bad = client.post("/sdapi/v1/txt2img", json={"prompt": "boom", "steps": 1, "width": 64, "height": 64})
    good = client.post("/sdapi/v1/txt2img", json={"prompt": "fine", "steps": 1, "width": 64, "height": 64})
    r_bad, r_good = await asyncio.gather(bad, good)
    assert r_bad.status_code == 500
    assert set(r_bad.json()) == {"error", "detail", "body", "errors"}
    assert "exploded" in r_bad.json()["errors"]
    assert "Traceback" not in r_bad.text
    assert r_good.status_code == 200


async def test_out_of_memory_names_what_to_lower(client: httpx.AsyncClient) -> None:
    r = await client.post("/sdapi/v1/txt2img", json={"prompt": "oom", "steps": 1, "width": 64, "height": 64})
    assert r.status_code == 507
    assert r.json()["error"] == "OutOfMemory"
    assert "batch_size" in r.json()["detail"]
    ok = await client.post("/sdapi/v1/txt2img", json={"steps": 1, "width": 64, "height": 64})
    assert ok.status_code == 200


async def test_legacy_firstphase_sizes(client: httpx.AsyncClient, engine: FakeEngine) -> None:
    payload = {"prompt": "x", "steps": 2, "enable_hr": True, "width": 128, "height": 96,
               "firstphase_width": 64, "firstphase_height": 48}
    r = await client.post("/sdapi/v1/txt2img", json=payload)
    assert r.status_code == 200, r.text
    call = engine.calls[0]
    assert (call.width, call.height) == (64, 48)
    assert call.hires is not None and (call.hires.resize_x, call.hires.resize_y) == (128, 96)
    r = await client.post("/sdapi/v1/txt2img", json={**payload, "firstphase_height": 0})
    assert r.status_code == 400 and r.json()["detail"].startswith("firstphase_height:")


async def test_known_but_ignored_fields_are_logged_once(
    client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    from sdgate.server.dialects.a1111 import router

    router._ignored_fields.forget("comments")
    payload = {"prompt": "x", "steps": 2, "width": 64, "height": 64, "comments": {"a": 1}}
    with caplog.at_level("INFO", logger="sdgate.a1111"):
        for _ in range(2):
            assert (await client.post("/sdapi/v1/txt2img", json=payload)).status_code == 200
    assert caplog.text.count("accepting and ignoring comments") == 1
    assert "accepting and ignoring force_task_id" not in caplog.text  # left at its default


async def test_ngms_and_mask_round_reach_the_engine(client: httpx.AsyncClient, engine: FakeEngine) -> None:
    base = {"prompt": "x", "steps": 2, "width": 64, "height": 64}
    for extra in ({"s_min_uncond": 0.5}, {"override_settings": {"s_min_uncond": 2}}, {}):
        assert (await client.post("/sdapi/v1/txt2img", json={**base, **extra})).status_code == 200
    assert [call.s_min_uncond for call in engine.calls] == [0.5, 2.0, 0.0]
    r = await client.post("/sdapi/v1/txt2img", json={**base, "s_min_uncond": -1})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "s_min_uncond"]  # a schema bound
    buf = io.BytesIO()
    Image.new("RGB", (64, 64)).save(buf, "PNG")
    init = base64.b64encode(buf.getvalue()).decode()
    for mask_round in (False, True):
        body = {**base, "init_images": [init], "mask": init, "mask_round": mask_round}
        assert (await client.post("/sdapi/v1/img2img", json=body)).status_code == 200
    assert [call.mask_round for call in engine.calls[-2:]] == [False, True]
