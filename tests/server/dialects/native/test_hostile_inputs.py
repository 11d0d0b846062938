"""Issue 13's native cases: each hostile request is refused naming its field and leaves no job; the
schema states the limits and statuses; a 405 lists every method of its path."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from sdgate.settings import Settings
from tests.fakes import FakeEngine
from tests.server.dialects.native.conftest import serve, submit, wait_state


async def post_raw(api: httpx.AsyncClient, text: str) -> httpx.Response:
    """``POST /api/v1/jobs`` with a body as written (``NaN`` and ``Infinity`` are not JSON)."""
    return await api.post("/api/v1/jobs", content=text, headers={"content-type": "application/json"})


async def job_count(api: httpx.AsyncClient) -> int:
    r = await api.get("/api/v1/jobs")
    assert r.status_code == 200, r.text
    return len(r.json()["jobs"])


def nested(depth: int) -> dict[str, Any]:
    doc: dict[str, Any] = {}
    for _ in range(depth - 1):
        doc = {"k": doc}
    return doc


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ('{"prompt": "x", "cfg_scale": NaN}', "cfg_scale"),
        ('{"prompt": "x", "cfg_scale": Infinity}', "cfg_scale"),
        ('{"prompt": "x", "cfg_scale": -Infinity}', "cfg_scale"),
        ('{"prompt": "x", "hires": {"scale": NaN}}', "hires.scale"),
        ('{"prompt": "x", "loras": [{"name": "a", "te_weight": NaN}]}', "loras.0.te_weight"),
        ('{"prompt": "x", "metadata": {"a": NaN}}', "metadata"),
        ('{"prompt": "x", "seed": false}', "seed"),
        ('{"prompt": "x", "steps": "5"}', "steps"),
        ('{"prompt": "x", "tiling": 1}', "tiling"),
        ('{"prompt": "x", "hires": {"resize_x": 65536, "resize_y": 65536}}', "hires.resize_x"),
        ('{"prompt": "x", "width": 64, "height": 65}', "height"),
        ('{"prompt": "x", "batch_size": 100000}', "batch_size"),
        ('{"prompt": "x", "loras": ' + json.dumps([{"name": "a"}] * 33) + "}", "loras"),
    ],
)
async def test_a_hostile_number_is_a_422_naming_it_and_no_job(
    api: httpx.AsyncClient, text: str, field: str
) -> None:
    r = await post_raw(api, text)
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["field"] == field or error["field"].startswith(field + "."), error
    assert await job_count(api) == 0


async def test_metadata_nested_500_deep_is_refused_and_leaves_no_job(api: httpx.AsyncClient) -> None:
    r = await api.post("/api/v1/jobs", json={"prompt": "x", "metadata": nested(500)})
    assert r.status_code == 422, r.text
    assert r.json()["error"]["field"] == "metadata" and "nested" in r.json()["error"]["message"]
    assert await job_count(api) == 0
    # Four levels (an object of objects of objects of lists) is fine and returned as sent.
    fine = {"a": {"b": {"c": [1, 2.5, True, None, "x"]}}}
    job = await submit(api, prompt="x", steps=1, metadata=fine)
    assert job["metadata"] == fine


@pytest.mark.parametrize("value", ['a"b:1', "a\\b:1", "nocolon", ":empty-key"])
async def test_a_malformed_metadata_filter_is_refused_naming_it(api: httpx.AsyncClient, value: str) -> None:
    r = await api.get("/api/v1/jobs", params={"metadata": value})
    assert r.status_code == 422, r.text
    assert r.json()["error"]["field"].startswith("metadata")


async def test_seed_false_is_not_seed_zero(api: httpx.AsyncClient, engine: FakeEngine) -> None:
    r = await api.post("/api/v1/jobs", json={"prompt": "x", "seed": False})
    assert r.status_code == 422 and r.json()["error"]["field"] == "seed"
    # An integral float is JSON Schema's integer, as the schema says.
    job = await submit(api, prompt="x", steps=1.0, seed=7.0)
    assert job["request"]["seed"] == 7 and job["request"]["steps"] == 1


async def test_restore_faces_names_an_installed_restorer(
    api: httpx.AsyncClient, models_dir: Path
) -> None:
    r = await api.post("/api/v1/jobs", json={"prompt": "x", "restore_faces": "GFPGAN"})
    assert r.status_code == 404 and r.json()["error"]["field"] == "restore_faces", r.text
    assert "GFPGAN" in r.json()["error"]["message"]
    weights = models_dir / "GFPGAN" / "GFPGANv1.4.pth"
    weights.parent.mkdir(parents=True)
    weights.write_bytes(b"\0")
    job = await submit(api, prompt="x", steps=1, restore_faces="gfpgan")
    assert job["request"]["restore_faces"] == "GFPGAN"
    done = await wait_state(api, job["id"])
    assert done["state"] == "succeeded"
    other = await api.post("/api/v1/jobs", json={"prompt": "x", "restore_faces": "CodeFormer"})
    assert other.status_code == 404 and "installed: GFPGAN" in other.json()["error"]["message"]


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("PUT", "/api/v1/jobs", "GET, POST"),
        ("PATCH", "/api/v1/jobs/job_x", "DELETE, GET"),
        ("GET", "/api/v1/jobs/job_x/cancel", "POST"),
        ("POST", "/readyz", "GET"),
        ("DELETE", "/sdapi/v1/options", "GET, POST"),  # app-wide: every dialect's shared paths
    ],
)
async def test_a_405_allows_every_method_of_its_path(
    api: httpx.AsyncClient, method: str, path: str, allow: str
) -> None:
    r = await api.request(method, path)
    assert r.status_code == 405, r.text
    assert r.headers["allow"] == allow


async def test_the_schema_states_the_limits_and_the_statuses(api: httpx.AsyncClient) -> None:
    doc = (await api.get("/openapi.json")).json()
    props = doc["components"]["schemas"]["JobCreate"]["properties"]
    width = props["width"]["anyOf"][0]
    assert width["type"] == "integer" and width["multipleOf"] == 8 and width["maximum"] >= 4096
    assert props["batch_size"]["maximum"] and props["prompt"]["maxLength"]
    assert props["loras"]["maxItems"] == 32 and "restore_faces" in props
    hires = doc["components"]["schemas"]["HiresIn"]["properties"]
    assert hires["scale"]["minimum"] == 1 and hires["resize_x"]["maximum"]
    error = {"$ref": "#/components/schemas/ErrorBody"}
    ops = doc["paths"]
    for path, item in ops.items():
        if not path.startswith("/api/v1/"):
            continue
        for method, op in item.items():
            for status in ("400", "422", "429", "500", "507"):
                assert op["responses"][status]["content"]["application/json"]["schema"] == error, (
                    method, path, status)
    auth = ops["/api/v1/jobs"]["post"]["responses"]["401"]["content"]["application/json"]["schema"]
    assert auth == error  # the auth middleware answers in the route's dialect
    assert "404" in ops["/api/v1/jobs/{job_id}"]["get"]["responses"]
    assert "409" in ops["/api/v1/jobs/{job_id}/cancel"]["post"]["responses"]
    ready = ops["/readyz"]["get"]["responses"]["503"]["content"]["application/json"]["schema"]
    assert ready == {"$ref": "#/components/schemas/ReadyOut"}
    events = ops["/api/v1/jobs/{job_id}/events"]["get"]["responses"]["200"]["content"]
    assert list(events) == ["text/event-stream"]
    image = ops["/api/v1/images/{image_id}"]["get"]["responses"]["200"]["content"]
    assert "image/png" in image and "application/json" not in image


async def test_a_body_that_does_not_parse_is_a_native_error(api: httpx.AsyncClient) -> None:
    r = await post_raw(api, "{not json")
    assert r.status_code in (400, 422), r.text
    assert r.json()["error"]["code"]
    up = await api.post("/api/v1/uploads", content=b"--x\r\n[]--x--\r\n",
                        headers={"content-type": "multipart/form-data; boundary=x"})
    assert up.status_code == 400 and up.json()["error"]["field"] in ("body", "file"), up.text


async def test_a_401_has_the_documented_body(native_settings: Settings, engine: FakeEngine) -> None:
    async with serve(native_settings, engine, api_auth="ann:secret") as api:
        r = await api.post("/api/v1/jobs", json={"prompt": "x"})
        assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
