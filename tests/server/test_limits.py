"""Issue 13: every value a request derives is bounded before a job exists, refusals leave nothing
behind, stored bad rows still read, and error rendering never raises. Each case of the issue goes
through the dialect where it was found; dialects may refuse a field first at their own schema (422),
the central check (``server.validation.check_request`` from ``jobflow.submit``) catches the rest."""

from __future__ import annotations

import json
import math
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from sdgate.core.errors import InvalidRequest, PayloadTooLarge, SdgateError
from sdgate.core.requests import GenerationRequest, HiresSettings
from sdgate.server import jobflow
from sdgate.server.app import create_app
from sdgate.server.auth import ANONYMOUS
from sdgate.server.errors import DialectRoute, fastapi_validation_body, json_safe, render_safely
from sdgate.server.services import Services
from sdgate.settings import Settings
from tests.fakes import FakeEngine

FIFTY_MB = 50 * 1024 * 1024


@dataclass
class Server:
    client: httpx.AsyncClient
    services: Services

    def job_count(self) -> int:
        return len(self.services.store.list(limit=10_000))


async def _serve(settings: Settings) -> AsyncIterator[Server]:
    app = create_app(settings, engine=FakeEngine())
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://sdgate", timeout=60) as c:
            yield Server(c, app.state.services)


@pytest.fixture
async def server(settings: Settings) -> AsyncIterator[Server]:
    async for s in _serve(settings):
        yield s


@pytest.fixture
async def small_memory_server(settings: Settings) -> AsyncIterator[Server]:
    async for s in _serve(settings.model_copy(update={"max_job_memory_bytes": 64 * 2**20})):
        yield s


def _raw(body: str) -> dict[str, Any]:
    """A JSON body sent as written (NaN, a lone surrogate escape), which httpx's encoder refuses."""
    return {"content": body.encode(), "headers": {"content-type": "application/json"}}


def _text(response: httpx.Response) -> str:
    return json.dumps(response.json())


def _assert_refused(response: httpx.Response, *names: str, statuses: tuple[int, ...] = (400,)) -> None:
    assert response.status_code in statuses, (response.status_code, response.text[:500])
    assert response.headers.get("x-request-id")
    text = _text(response)
    assert any(name in text for name in names), text[:500]


# -- derived sizes --------------------------------------------------------------------------------


async def test_a1111_hires_fix_past_max_pixels_is_refused_without_a_job(server: Server) -> None:
    before = server.job_count()
    body = {"prompt": "x", "steps": 2, "width": 1024, "height": 1024, "enable_hr": True, "hr_scale": 4}
    r = await server.client.post("/sdapi/v1/txt2img", json=body)
    _assert_refused(r, "hr_scale", "hires")
    assert "max_pixels" in _text(r) or "4194304" in _text(r)
    # The issue's own request: 64x64 times 64 (the A1111 schema may bound hr_scale first: 422).
    body = {"prompt": "x", "steps": 2, "width": 64, "height": 64, "enable_hr": True, "hr_scale": 64}
    r = await server.client.post("/sdapi/v1/txt2img", json=body)
    _assert_refused(r, "hr_scale", "hires", statuses=(400, 422))
    r = await server.client.post("/sdapi/v1/txt2img", json={**body, "hr_scale": 1e6})
    _assert_refused(r, "hr_scale", "hires", statuses=(400, 422))
    assert server.job_count() == before


async def test_native_hires_resize_past_the_limits_is_refused_without_a_job(server: Server) -> None:
    before = server.job_count()
    hires = {"resize_x": 65536, "resize_y": 65536}
    r = await server.client.post("/api/v1/jobs", json={"prompt": "x", "steps": 2, "hires": hires})
    _assert_refused(r, "resize_x", "hires", statuses=(400, 422))
    r = await server.client.post(
        "/api/v1/jobs", json={"prompt": "x", "steps": 2, "width": 2048, "height": 2048, "hires": {"scale": 2}}
    )
    _assert_refused(r, "hires")
    assert "max_pixels" in _text(r)
    assert server.job_count() == before


def test_the_central_check_names_the_derived_value(settings: Settings) -> None:
    services = Services.build(settings, engine=FakeEngine(), run_workers=False)
    check = jobflow.check_submission
    base = GenerationRequest(prompt="x", width=64, height=64, steps=2)
    cases: list[tuple[dict[str, Any], str]] = [
        (
            {"hires": HiresSettings(scale=64)},
            "hires.scale: the upscale 4096x4096 (64 x 64x64) is more than the 4194304 pixels allowed "
            "(max_pixels)",
        ),
        ({"width": 2048, "height": 2048, "hires": HiresSettings(scale=2)}, "(max_pixels)"),
        ({"width": 1024, "height": 1024, "hires": HiresSettings(scale=5)}, "(max_side)"),
        ({"width": 1536, "height": 1536, "hires": HiresSettings(scale=2)}, "pixels allowed (max_pixels)"),
        ({"hires": HiresSettings(resize_x=65536, resize_y=65536)}, "hires.resize_x:"),
        ({"hires": HiresSettings(scale=1e300)}, "hires.scale:"),
        ({"hires": HiresSettings(scale=math.inf)}, "hires.scale: must be a finite number"),
        ({"hires": HiresSettings(scale=0.01)}, "is too small"),
        ({"seed_resize_from_w": 65536, "seed_resize_from_h": 64}, "seed_resize_from_w:"),
        ({"steps": 1000, "hires": HiresSettings(scale=1, second_pass_steps=1000)}, "(max_total_steps)"),
        ({"hires": HiresSettings(scale=1, second_pass_steps=5000)}, "hires.second_pass_steps:"),
        ({"batch_size": 16, "n_iter": 8}, "(max_batch_images)"),
        ({"cfg_scale": math.nan}, "cfg_scale: must be a finite number"),
        ({"subseed_strength": -math.inf}, "subseed_strength: must be a finite number"),
        ({"s_churn": math.nan}, "s_churn:"),
        ({"clip_skip": 99}, "clip_skip:"),
        ({"eta_noise_seed_delta": -5}, "eta_noise_seed_delta:"),
        ({"prompt": "a <lora:x:nan> b"}, "prompt: the weight of <lora:x>"),
        ({"prompt": " ".join(f"<lora:l{i}:1>" for i in range(40))}, "(max_loras)"),
        ({"negative_prompt": "cat " * 4000}, "negative_prompt: 4000 CLIP tokens"),
        ({"styles": ("ok", "bad\ud800")}, "styles[1]: is not valid Unicode"),
        ({"hires": HiresSettings(scale=1, prompt="\udfff")}, "hires.prompt: is not valid Unicode"),
        ({"sampler": "Euler\x00"}, "sampler: must not contain NUL"),
    ]
    for update, expected in cases:
        with pytest.raises(InvalidRequest) as info:
            check(services, base.model_copy(update=update))
        assert expected in info.value.message, (update, info.value.message)
        json.dumps(info.value.to_dict(), allow_nan=False).encode()  # the message itself renders
    with pytest.raises(PayloadTooLarge):
        check(services, base.model_copy(update={"prompt": "é" * 40_000}))  # 80,000 bytes
    check(services, base.model_copy(update={"prompt": "a cat, " * 300, "hires": HiresSettings(scale=2)}))
    services.store.close()


def test_metadata_is_bounded_centrally(settings: Settings) -> None:
    services = Services.build(settings, engine=FakeEngine(), run_workers=False)
    request = GenerationRequest(prompt="x", width=64, height=64, steps=2)
    deep: Any = 1
    for _ in range(500):
        deep = {"a": deep}
    for metadata, expected in [
        (deep, "max_metadata_depth"),
        ({"k": math.nan}, "finite"),
        ({"k": ["\ud800"]}, "valid Unicode"),
        ({"\ud800": 1}, "valid Unicode"),
        ({"k": 2**80}, "64-bit"),
        ({"k": b"x"}, "not a JSON value"),
        ({"k": "x" * 20_000}, "max_metadata_bytes"),
        ({f"k{i}": i for i in range(5000)}, "max_metadata_bytes"),
    ]:
        with pytest.raises(InvalidRequest) as info:
            jobflow.check_submission(services, request, metadata)
        assert expected in info.value.message, (metadata if len(str(metadata)) < 100 else "...", info.value)
    jobflow.check_submission(services, request, {"a": {"b": [1, 2.5, "c", None, True]}})
    services.store.close()


async def test_deep_metadata_on_native_leaves_no_job(server: Server) -> None:
    before = server.job_count()
    deep = "1"
    for _ in range(500):
        deep = '{"a":' + deep + "}"
    r = await server.client.post("/api/v1/jobs", **_raw('{"prompt":"x","steps":2,"metadata":' + deep + "}"))
    _assert_refused(r, "metadata", statuses=(400, 413, 422))
    with pytest.raises(InvalidRequest):  # and the central guard, whatever the dialect lets through
        await jobflow.submit(
            server.services, GenerationRequest(prompt="x", width=64, height=64, steps=2),
            dialect="native", principal=ANONYMOUS, metadata=json.loads(deep),
        )
    assert server.job_count() == before


# -- text ------------------------------------------------------------------------------------------


async def test_a_lone_surrogate_prompt_is_a_400_naming_prompt_and_no_job(server: Server) -> None:
    before = server.job_count()
    body = '{"prompt":"\\ud800x","steps":2,"width":64,"height":64}'
    r = await server.client.post("/sdapi/v1/txt2img", **_raw(body))
    _assert_refused(r, "prompt", statuses=(400, 422))
    r = await server.client.post("/api/v1/jobs", **_raw(body))
    _assert_refused(r, "prompt", statuses=(400, 422))
    assert server.job_count() == before
    assert (await server.client.get("/api/v1/jobs")).status_code == 200


async def test_a_stored_row_with_a_surrogate_or_nan_still_reads(server: Server) -> None:
    """Rows written before submit checked everything (straight through the store) must not turn
    every listing into a 500."""
    store = server.services.store
    bad = [
        store.submit(GenerationRequest(prompt="\ud800x", width=64, height=64, steps=2, model="nope"),
                     metadata={"note": "\udc80", "n": math.nan}),
        store.submit(GenerationRequest(prompt="x", cfg_scale=math.nan, width=64, height=64, model="nope",
                                       hires=HiresSettings(scale=math.inf))),
    ]
    listing = await server.client.get("/api/v1/jobs")
    assert listing.status_code == 200, listing.text[:300]
    assert {j.id for j in bad} <= {job["id"] for job in listing.json()["jobs"]}
    for job in bad:
        r = await server.client.get(f"/api/v1/jobs/{job.id}")
        assert r.status_code == 200, r.text[:300]
    assert "\\ud800x" in _text(await server.client.get(f"/api/v1/jobs/{bad[0].id}"))


async def test_a_50_mb_prompt_is_refused_quickly(server: Server) -> None:
    before = server.job_count()
    prompt = "a" * FIFTY_MB
    timings = {}
    for path, body in [
        ("/sdapi/v1/txt2img", {"prompt": prompt, "steps": 2}),
        ("/api/v1/jobs", {"prompt": prompt, "steps": 2}),
        ("/models/any", {"inputs": prompt}),
    ]:
        started = time.perf_counter()
        r = await server.client.post(path, json=body)
        timings[path] = time.perf_counter() - started
        _assert_refused(r, "prompt", "inputs", statuses=(413, 422))
    print("50 MB prompt refused in", {k: round(v, 2) for k, v in timings.items()})
    assert max(timings.values()) < 10, timings
    assert server.job_count() == before
    started = time.perf_counter()  # the central check alone, whatever the dialect's schema says
    with pytest.raises(PayloadTooLarge):
        jobflow.check_submission(server.services, GenerationRequest(prompt=prompt))
    assert time.perf_counter() - started < 0.1


async def test_too_many_tokens_is_a_400_naming_prompt(server: Server) -> None:
    r = await server.client.post("/sdapi/v1/txt2img", json={"prompt": "cat " * 4000, "steps": 2})
    _assert_refused(r, "max_prompt_tokens")
    r = await server.client.post("/api/v1/jobs", json={"prompt": "a cat, " * 300, "steps": 2,
                                                       "width": 64, "height": 64})
    assert r.status_code == 202, r.text[:300]


# -- memory --------------------------------------------------------------------------------------


async def test_a_job_over_the_memory_budget_is_refused(small_memory_server: Server) -> None:
    server = small_memory_server
    before = server.job_count()
    r = await server.client.post("/sdapi/v1/txt2img", json={"prompt": "x", "steps": 2, "width": 512,
                                                            "height": 512, "batch_size": 4})
    _assert_refused(r, "max_job_memory_bytes")
    assert "batch_size" in _text(r)
    r = await server.client.post("/api/v1/jobs", json={"prompt": "x", "steps": 2, "width": 64, "height": 64})
    assert r.status_code == 202, r.text[:300]  # 64x64 fits in 64 MiB
    assert server.job_count() == before + 1


async def test_a_controlnets_weights_count_towards_the_memory_budget(settings: Settings) -> None:
    """A job that fits alone but not with the ControlNet it names is refused naming controlnets."""
    from tests.server.dialects.native.test_controlnet import write_controlnet

    big = settings.resolved_models_dir / "ControlNet" / "control_big.safetensors"
    write_controlnet(big)
    with big.open("r+b") as f:
        f.truncate(96 * 2**20)  # 96 MiB of weights, sparse on disk
    write_controlnet(settings.resolved_models_dir / "ControlNet" / "control_small.safetensors")
    image = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAIAAACQd1PeAAAADElEQVR4nGP4z8AAAAMBAQDJ/pLvAAAAAElFTkSuQmCC"
    small_job = {"prompt": "x", "steps": 2, "width": 64, "height": 64}
    async for server in _serve(settings.model_copy(update={"max_job_memory_bytes": 64 * 2**20})):
        before = server.job_count()
        r = await server.client.post("/api/v1/jobs", json={
            **small_job, "controlnets": [{"model": "control_big", "image": image}]})
        _assert_refused(r, "max_job_memory_bytes")
        assert r.json()["error"]["field"] == "controlnets"
        assert server.job_count() == before
        r = await server.client.post("/api/v1/jobs", json={
            **small_job, "controlnets": [{"model": "control_small", "image": image}]})
        assert r.status_code == 202, r.text[:300]


# -- queries and error rendering -------------------------------------------------------------------


async def test_a_metadata_filter_with_a_quote_is_not_a_5xx(server: Server) -> None:
    for value in ('a"b:1', "a\\b:1", "$.x:1", "a'b:1"):
        r = await server.client.get("/api/v1/jobs", params={"metadata": value})
        assert r.status_code < 500, (value, r.status_code, r.text[:300])


async def test_nan_and_surrogates_in_a_bad_body_render(server: Server) -> None:
    bodies = ['{"prompt":"x","cfg_scale":NaN}', '{"prompt":"x","cfg_scale":Infinity}',
              '{"prompt":"x","hires":{"scale":NaN}}', '{"prompt":"x","steps":"\\ud800"}',
              '{"prompt":"x","\\ud800":1}', '{"prompt":"x","steps":[NaN,{"a":-Infinity}]}']
    for path in ("/api/v1/jobs", "/sdapi/v1/txt2img", "/v1/images/generations", "/models/m",
                 "/v1/generation/stable-diffusion-v1-6/text-to-image"):
        for body in bodies:
            r = await server.client.post(path, **_raw(body))
            assert r.status_code < 500, (path, body, r.status_code, r.text[:300])
            assert "cfg_scale" not in body or r.status_code >= 400, (path, body, r.text[:300])
            assert r.headers.get("x-request-id")
            r.json()


def test_validation_bodies_always_encode() -> None:
    deep: Any = math.nan
    for _ in range(100):
        deep = [deep]
    errors = [
        {"type": "t", "loc": ("body", "cfg_scale"), "msg": "m", "input": math.nan},
        {"type": "t", "loc": ("body", "\ud800"), "msg": "bad \udc00", "input": {"x": [math.inf, b"\xff"]}},
        {"type": "t", "loc": ("body",), "msg": "m", "input": deep, "ctx": {"error": ValueError("x")}},
        {"type": "t", "loc": ("body",), "msg": "m", "input": 10**5000},
        {"type": "t", "loc": ("body",), "msg": "m", "input": "\ud800" * 1000},
    ]
    body = fastapi_validation_body(errors)
    json.dumps(body, allow_nan=False, ensure_ascii=False).encode("utf-8")
    assert body[0]["input"] == "NaN" and body[1]["input"] == {"x": ["Infinity", "<1 bytes>"]}
    assert body[1]["loc"] == ["body", "\\ud800"]
    assert json_safe(-math.inf) == "-Infinity"


def test_a_renderer_that_fails_still_answers() -> None:
    class Broken(DialectRoute):
        @staticmethod
        def render_error(err: SdgateError) -> Any:
            raise ValueError("the renderer is broken")

    err = InvalidRequest("prompt: bad", field="prompt")
    response = render_safely(lambda: Broken.render_error(err), err)
    assert response.status_code == 400
    assert json.loads(bytes(response.body))["error"]["code"] == "invalid_request"
