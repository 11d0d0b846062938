"""The native job lifecycle through ASGITransport: submit, get, list, cancel, delete, retry."""

from __future__ import annotations

import asyncio
import base64

import httpx
import pytest

from tests.fakes import FakeEngine
from tests.server.dialects.native.conftest import png_b64, serve, submit, wait_state


async def test_txt2img_lifecycle_with_the_wire_names(api: httpx.AsyncClient) -> None:
    body = {"prompt": "a red circle", "negative_prompt": "", "width": 64, "height": 64, "steps": 3,
            "cfg_scale": 7.0, "sampler": "DPM++ 2M", "scheduler": "karras", "seed": 42, "batch_size": 2,
            "model": "alpha", "init_image": None, "mask": None, "denoising_strength": None,
            "priority": 0, "callback_url": None, "metadata": {"user": "abc"}}
    r = await api.post("/api/v1/jobs", json=body)
    assert r.status_code == 202, r.text
    job = r.json()
    assert job["id"].startswith("job_") and job["state"] in ("queued", "running", "succeeded")
    assert job["links"] == {"self": f"/api/v1/jobs/{job['id']}", "events": f"/api/v1/jobs/{job['id']}/events",
                            "cancel": f"/api/v1/jobs/{job['id']}/cancel"}
    assert r.headers["location"] == job["links"]["self"]
    assert job["request"]["sampler"] == "DPM++ 2M" and job["request"]["scheduler"] == "karras"
    assert job["metadata"] == {"user": "abc"}
    done = await wait_state(api, job["id"])
    assert done["state"] == "succeeded" and done["error"] is None and done["position"] is None
    images = done["result"]["images"]
    assert [i["seed"] for i in images] == [42, 43]
    assert images[0]["url"] == f"/api/v1/images/{images[0]['id']}"
    assert (images[0]["width"], images[0]["height"]) == (64, 64)
    assert done["progress"] == {"step": 3, "total": 3, "eta_s": done["progress"]["eta_s"], "fraction": 1.0,
                                "iteration": 0, "iterations": 1}
    png = await api.get(images[0]["url"])
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"


async def test_defaults_random_seed_and_model_sizes(api: httpx.AsyncClient, engine: FakeEngine) -> None:
    r = await api.post("/api/v1/jobs", json={"prompt": "x", "seed": -1, "width": None})
    job = r.json()
    assert r.status_code == 202
    req = job["request"]
    model = next(m for m in (await api.get("/api/v1/models")).json() if m["default"])
    assert req["seed"] >= 0 and req["model"] == model["name"]
    assert (req["width"], req["height"], req["steps"]) == (model["width"], model["height"], model["steps"])
    done = await wait_state(api, job["id"])
    assert done["result"]["images"][0]["seed"] == req["seed"]
    assert engine.calls[-1].seed == req["seed"]


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        ({"sampler": "Nope 9000"}, 400, "sampler"),
        ({"scheduler": "wobbly"}, 400, "scheduler"),
        ({"width": 65}, 422, "width"),  # the schema's multipleOf 8
        ({"width": 8192}, 400, "width"),  # within the schema's ceiling, over the server's max_side
        ({"steps": 0}, 422, "steps"),
        ({"batch_size": 1000}, 400, "batch_size"),
        ({"promt": "typo"}, 422, "promt"),
        ({"mask": png_b64("white")}, 400, "init_image"),
        ({"mode": "img2img"}, 400, "init_image"),
        ({"init_image": "not base64!"}, 400, "init_image"),
        ({"init_image": "img_" + "ab" * 12}, 404, "init_image"),
        ({"callback_url": "ftp://example.com/x"}, 400, "callback_url"),
        ({"metadata": {"x": "y" * 20000}}, 413, "metadata"),  # max_metadata_bytes
        ({"seed": 2**64}, 422, "seed"),
    ],
)
async def test_bad_requests_name_the_field(
    api: httpx.AsyncClient, body: dict, status: int, field: str
) -> None:
    r = await api.post("/api/v1/jobs", json={"prompt": "x", **body})
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["field"] == field and error["code"] and error["message"]


async def test_img2img_with_base64_and_inpaint_with_an_upload(
    api: httpx.AsyncClient, engine: FakeEngine
) -> None:
    r = await api.post("/api/v1/jobs", json={"prompt": "x", "init_image": png_b64("blue"), "steps": 2,
                                             "width": 64, "height": 64})
    assert r.status_code == 202, r.text
    job = await wait_state(api, r.json()["id"])
    assert job["state"] == "succeeded"
    assert job["request"]["mode"] == "img2img" and job["request"]["denoising_strength"] == 0.75
    init_id = job["request"]["init_image"]
    assert (await api.get(f"/api/v1/images/{init_id}")).status_code == 200

    up = await api.post("/api/v1/uploads", files={"file": ("i.png", base64.b64decode(png_b64()))})
    assert up.status_code == 201, up.text
    mask_up = await api.post("/api/v1/uploads", content=base64.b64decode(png_b64("white")),
                             headers={"content-type": "image/png"})
    assert mask_up.status_code == 201, mask_up.text
    r = await api.post("/api/v1/jobs", json={"prompt": "x", "init_image": up.json()["id"],
                                             "mask": mask_up.json()["id"], "denoising_strength": 0.5,
                                             "steps": 2, "width": 64, "height": 64})
    assert r.status_code == 202, r.text
    job = await wait_state(api, r.json()["id"])
    assert job["state"] == "succeeded" and job["request"]["mode"] == "inpaint"
    assert engine.calls[-1].mask is not None and len(engine.calls[-1].init_images) == 1


async def test_failed_job_carries_its_error(api: httpx.AsyncClient) -> None:
    r = await api.post("/api/v1/jobs", json={"prompt": "oom", "steps": 2})
    job = await wait_state(api, r.json()["id"])
    assert job["state"] == "failed" and job["result"] is None
    assert job["error"]["code"] == "out_of_memory"


async def test_cancel_queued_never_runs_and_running_stops(api: httpx.AsyncClient, engine: FakeEngine) -> None:
    running = (await api.post("/api/v1/jobs", json={"prompt": "slow", "steps": 500})).json()
    await wait_state(api, running["id"], ("running",))
    queued = (await api.post("/api/v1/jobs", json={"prompt": "never", "steps": 2})).json()
    assert queued["state"] == "queued" and queued["position"] == 0
    r = await api.post(f"/api/v1/jobs/{queued['id']}/cancel")
    assert r.status_code == 200 and r.json()["state"] == "cancelled"
    r = await api.post(f"/api/v1/jobs/{running['id']}/cancel")
    assert r.status_code == 200
    done = await wait_state(api, running["id"])
    assert done["state"] == "cancelled" and done["progress"]["step"] < 500
    assert all(call.prompt != "never" for call in engine.calls)
    again = await api.post(f"/api/v1/jobs/{queued['id']}/cancel")
    assert again.status_code == 409 and again.json()["error"]["code"] == "conflict"


async def test_delete_cancels_then_removes_job_and_images(api: httpx.AsyncClient) -> None:
    done = (await api.post("/api/v1/jobs", json={"prompt": "x", "steps": 2, "seed": 5})).json()
    done = await wait_state(api, done["id"])
    image_url = done["result"]["images"][0]["url"]
    running = (await api.post("/api/v1/jobs", json={"prompt": "slow", "steps": 500})).json()
    await wait_state(api, running["id"], ("running",))
    assert (await api.delete(f"/api/v1/jobs/{running['id']}")).status_code == 204
    assert (await api.get(f"/api/v1/jobs/{running['id']}")).status_code == 404
    assert (await api.delete(f"/api/v1/jobs/{done['id']}")).status_code == 204
    assert (await api.get(f"/api/v1/jobs/{done['id']}")).json()["error"]["code"] == "not_found"
    assert (await api.get(image_url)).status_code == 404
    assert (await api.delete(f"/api/v1/jobs/{done['id']}")).status_code == 404


async def test_delete_keeps_images_another_job_shares(api: httpx.AsyncClient) -> None:
    first = await wait_state(api, (await submit(api, prompt="x", seed=9, steps=2))["id"])
    retried = (await api.post(f"/api/v1/jobs/{first['id']}/retry")).json()
    second = await wait_state(api, retried["id"])
    assert second["result"]["images"][0]["id"] == first["result"]["images"][0]["id"]  # same seed, same bytes
    assert (await api.delete(f"/api/v1/jobs/{first['id']}")).status_code == 204
    assert (await api.get(second["result"]["images"][0]["url"])).status_code == 200


async def test_retry_makes_a_new_job_with_the_same_request(api: httpx.AsyncClient) -> None:
    failed = await wait_state(api, (await submit(api, prompt="boom", steps=2))["id"])
    r = await api.post(f"/api/v1/jobs/{failed['id']}/retry")
    assert r.status_code == 202
    assert r.json()["id"] != failed["id"] and r.json()["request"] == failed["request"]
    running = (await api.post("/api/v1/jobs", json={"prompt": "slow", "steps": 500})).json()
    r = await api.post(f"/api/v1/jobs/{running['id']}/retry")
    assert r.status_code == 409
    await api.post(f"/api/v1/jobs/{running['id']}/cancel")


async def test_list_filters_and_cursor_pagination(api: httpx.AsyncClient) -> None:
    ids = []
    for i in range(5):
        ids.append((await submit(api, prompt="x", steps=1, metadata={"batch": f"b{i % 2}"}))["id"])
    for job_id in ids:
        await wait_state(api, job_id)
    page = (await api.get("/api/v1/jobs", params={"limit": 2})).json()
    assert [j["id"] for j in page["jobs"]] == ids[::-1][:2] and page["next_cursor"]
    seen = [j["id"] for j in page["jobs"]]
    while page["next_cursor"]:
        page = (await api.get("/api/v1/jobs", params={"limit": 2, "cursor": page["next_cursor"]})).json()
        seen += [j["id"] for j in page["jobs"]]
    assert seen == ids[::-1]
    b0 = (await api.get("/api/v1/jobs", params={"metadata": "batch:b0"})).json()["jobs"]
    assert {j["id"] for j in b0} == {ids[0], ids[2], ids[4]}
    none = (await api.get("/api/v1/jobs", params={"state": ["queued", "running"]})).json()["jobs"]
    assert none == []
    later = (await api.get("/api/v1/jobs", params={"created_after": "2999-01-01T00:00:00Z"})).json()["jobs"]
    assert later == []
    bad = await api.get("/api/v1/jobs", params={"cursor": "garbage"})
    assert bad.status_code == 400 and bad.json()["error"]["field"] == "cursor"


async def test_queue_full_is_429_with_retry_after(native_settings, engine: FakeEngine) -> None:
    async with serve(native_settings, engine, max_queue=1) as api:
        running = (await api.post("/api/v1/jobs", json={"prompt": "slow", "steps": 500})).json()
        await wait_state(api, running["id"], ("running",))
        assert (await api.post("/api/v1/jobs", json={"prompt": "x"})).status_code == 202
        r = await api.post("/api/v1/jobs", json={"prompt": "x"})
        assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
        assert r.json()["error"]["code"] == "queue_full"
        queue = (await api.get("/api/v1/queue")).json()
        assert queue["depth"] == 1 and queue["running"] == [running["id"]] and queue["workers"] == 1
        await api.delete(f"/api/v1/jobs/{running['id']}")


async def test_models_samplers_schedulers_and_ops(api: httpx.AsyncClient) -> None:
    models = (await api.get("/api/v1/models")).json()
    assert {"alpha", "sub_beta"} <= {m["name"] for m in models}
    assert sum(m["default"] for m in models) == 1
    samplers = (await api.get("/api/v1/samplers")).json()
    assert "DPM++ 2M" in {s["name"] for s in samplers}
    assert "karras" in {s["name"] for s in (await api.get("/api/v1/schedulers")).json()}
    assert (await api.get("/healthz")).json()["status"] == "ok"
    ready = await api.get("/readyz")
    assert ready.status_code == 200 and ready.json()["ready"] is True
    paths = (await api.get("/openapi.json")).json()["paths"]
    assert {"/api/v1/jobs", "/api/v1/jobs/{job_id}/events", "/api/v1/uploads", "/api/v1/queue"} <= set(paths)


async def test_jobs_of_other_users_are_invisible(native_settings, engine: FakeEngine) -> None:
    async with serve(native_settings, engine, api_auth="ann:a,bob:b") as anon:
        transport = httpx.ASGITransport(app=anon.app)  # type: ignore[attr-defined]
        ann = httpx.AsyncClient(transport=transport, base_url="http://t", auth=("ann", "a"))
        bob = httpx.AsyncClient(transport=transport, base_url="http://t", auth=("bob", "b"))
        async with ann, bob:
            assert (await anon.post("/api/v1/jobs", json={"prompt": "x"})).status_code == 401
            job = (await ann.post("/api/v1/jobs", json={"prompt": "x", "steps": 1})).json()
            assert (await bob.get(f"/api/v1/jobs/{job['id']}")).status_code == 404
            assert (await bob.get("/api/v1/jobs")).json()["jobs"] == []
            assert (await ann.get(f"/api/v1/jobs/{job['id']}")).status_code == 200
            # The same Idempotency-Key is per caller: bob's makes bob's own job.
            headers = {"Idempotency-Key": "k"}
            a = (await ann.post("/api/v1/jobs", json={"prompt": "i"}, headers=headers)).json()
            b = (await bob.post("/api/v1/jobs", json={"prompt": "i"}, headers=headers)).json()
            assert a["id"] != b["id"]
            for job_id, client in ((job["id"], ann), (a["id"], ann), (b["id"], bob)):
                await wait_state(client, job_id)


async def test_eight_concurrent_duplicate_submissions_make_one_job(
    api: httpx.AsyncClient, engine: FakeEngine
) -> None:
    body = {"prompt": "dup", "steps": 2, "seed": -1}
    headers = {"Idempotency-Key": "7f3c-dup"}
    posts = [api.post("/api/v1/jobs", json=body, headers=headers) for _ in range(8)]
    responses = await asyncio.gather(*posts)
    assert [r.status_code for r in responses] == [202] * 8
    assert len({r.json()["id"] for r in responses}) == 1
    assert sum(r.headers.get("idempotent-replayed") == "true" for r in responses) == 7
    job_id = responses[0].json()["id"]
    await wait_state(api, job_id)
    assert sum(call.prompt == "dup" for call in engine.calls) == 1
    other = await api.post("/api/v1/jobs", json={**body, "steps": 3}, headers=headers)
    assert other.status_code == 409 and other.json()["error"]["field"] == "Idempotency-Key"
    # After a delete the key is free: the same request makes a new job.
    assert (await api.delete(f"/api/v1/jobs/{job_id}")).status_code == 204
    again = await api.post("/api/v1/jobs", json=body, headers=headers)
    assert again.status_code == 202 and again.json()["id"] != job_id


def test_the_wire_schema_has_every_generation_request_field() -> None:
    from sdgate.core.requests import GenerationRequest
    from sdgate.server.dialects.native.protocol import JobCreate

    missing = set(GenerationRequest.model_fields) - set(JobCreate.model_fields)
    assert missing == set()


async def test_list_dates_at_the_ends_of_the_calendar_and_only_iso(api: httpx.AsyncClient) -> None:
    # Valid ISO 8601 (the schema says date-time): before year 1 in UTC, so the start of the calendar.
    r = await api.get("/api/v1/jobs", params={"created_after": "0001-01-01T00:00:00+01:00"})
    assert r.status_code == 200, r.text
    r = await api.get("/api/v1/jobs", params={"created_before": "0.5"})  # not read as a Unix time
    assert r.status_code == 422 and r.json()["error"]["field"] == "created_before"
