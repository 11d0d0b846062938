"""The native backend's lean path and new pieces on the MockTransport fake: one request per
generation (long poll + inline images), uploads sent once and by id, every new request field on
the wire, ``jobs.delete`` / ``jobs.retry``."""

from __future__ import annotations

import json

import pytest

from sdgate.client import AsyncClient, Client, ConflictError, Hires, ImageRequest, Lora
from tests.sdk.fakes import FakeNative, png_bytes


def client_for(native: FakeNative, **options) -> Client:
    return Client("http://sdgate.test", transport=native.transport, **options)


def paths(native: FakeNative) -> list[str]:
    return [f"{r.method} {r.url.path}" for r in native.requests]


def test_generate_is_one_request_with_the_images_inline() -> None:
    native = FakeNative(steps=3, long_poll=True)
    result = client_for(native).txt2img("a red circle", seed=5, n=2)
    assert paths(native) == ["POST /api/v1/jobs"]
    params = native.requests[0].url.params
    assert float(params["wait"]) > 0 and params.get_list("include") == ["images"]
    assert result.seeds == [5, 6] and result.infotexts == ["a red circle\nSeed: 5", "a red circle\nSeed: 6"]
    assert result.data[0][:8] == b"\x89PNG\r\n\x1a\n" and result.images[1].size == (8, 8)


def test_a_server_without_the_long_poll_is_followed_over_sse() -> None:
    native = FakeNative(steps=2, long_poll=False)
    result = client_for(native).txt2img("x", seed=1)
    assert result.seeds == [1]
    # this fake's terminal SSE event does not carry the job, so it is read once more
    assert paths(native) == [
        "POST /api/v1/jobs",
        "GET /api/v1/jobs/job_0001/events",
        "GET /api/v1/jobs/job_0001",
        "GET /api/v1/images/img_job_0001_0",
    ]


def test_progress_listeners_still_get_every_event() -> None:
    native = FakeNative(steps=2, long_poll=True)
    events: list = []
    client_for(native).txt2img("x", seed=1, on_progress=events.append)
    assert "wait" not in native.requests[0].url.params
    assert [e.kind for e in events] == ["queued", "queued", "started", "progress", "progress", "succeeded"]


def test_images_are_decoded_lazily_but_checked() -> None:
    from sdgate.client import APIResponseError
    from sdgate.client.backends._base import decode_image

    image, info = decode_image(png_bytes(infotext="hello"), where="x")
    assert info == "hello" and image.getpixel((0, 0)) == (255, 0, 0)
    with pytest.raises(APIResponseError, match="not an image"):
        decode_image(b"nope", where="x")


def test_init_images_are_uploaded_once_and_sent_by_id() -> None:
    native = FakeNative(long_poll=True, uploads=True)
    client = client_for(native)
    init, mask = png_bytes((1, 2, 3)), png_bytes((255, 255, 255))
    client.img2img("x", init_image=init)
    client.inpaint("y", init_image=init, mask=mask)
    client.with_options(timeout=60).img2img("z", init_image=init)  # a clone shares the backend's memory
    uploads = [r.content for r in native.requests if r.url.path == "/api/v1/uploads"]
    assert uploads == [init, mask]
    bodies = [json.loads(r.content) for r in native.requests if r.url.path == "/api/v1/jobs"]
    ids = {
        name: upload_id
        for upload_id, data in native.uploads.items()
        for name, d in (("init", init), ("mask", mask))
        if d == data
    }
    assert [b["init_image"] for b in bodies] == [ids["init"]] * 3
    assert bodies[1]["mask"] == ids["mask"] and "mask" not in bodies[0]


def test_an_expired_upload_is_uploaded_again() -> None:
    native = FakeNative(long_poll=True, uploads=True)
    client = client_for(native)
    init = png_bytes((9, 9, 9))
    client.img2img("x", init_image=init)
    native.uploads.clear()  # the server's retention removed it
    result = client.img2img("x", init_image=init, seed=3)
    assert result.seeds == [3]
    assert paths(native).count("POST /api/v1/uploads") == 2
    submits = [r for r in native.requests if r.url.path == "/api/v1/jobs"]
    assert len(submits) == 3
    # the resubmission is a new body, so a new idempotency key (the same key would be a 409)
    assert submits[1].headers["idempotency-key"] != submits[2].headers["idempotency-key"]


def test_every_new_field_reaches_the_native_wire() -> None:
    native = FakeNative(long_poll=True)
    request = ImageRequest(
        prompt="x",
        n_iter=2,
        subseed=9,
        subseed_strength=0.3,
        seed_resize_from_w=32,
        seed_resize_from_h=48,
        clip_skip=2,
        tiling=True,
        eta=0.5,
        s_churn=0.1,
        s_tmin=0.2,
        s_tmax=0.9,
        s_noise=1.001,
        eta_noise_seed_delta=31337,
        mask_blur=6,
        hires=Hires(scale=1.5, second_pass_steps=4, denoising_strength=0.4, sampler="Euler a"),
        loras=("detail:0.7", Lora("style", 0.5, unet_weight=0.25)),
        vae="kl-f8.safetensors",
        styles=("cinematic",),
    )
    client_for(native).generate(request)
    body = json.loads(native.requests[0].content)
    assert {k: body[k] for k in ("n_iter", "subseed", "subseed_strength", "seed_resize_from_w")} == {
        "n_iter": 2,
        "subseed": 9,
        "subseed_strength": 0.3,
        "seed_resize_from_w": 32,
    }
    assert (body["clip_skip"], body["tiling"], body["eta"], body["s_churn"], body["s_noise"]) == (
        2,
        True,
        0.5,
        0.1,
        1.001,
    )
    assert (body["eta_noise_seed_delta"], body["mask_blur_x"], body["mask_blur_y"]) == (31337, 6, 6)
    assert body["hires"] == {
        "scale": 1.5,
        "upscaler": "Latent",
        "second_pass_steps": 4,
        "denoising_strength": 0.4,
        "resize_x": 0,
        "resize_y": 0,
        "sampler": "Euler a",
        "prompt": "",
        "negative_prompt": "",
    }
    assert body["loras"] == [
        {"name": "detail", "te_weight": 0.7, "unet_weight": 0.7},
        {"name": "style", "te_weight": 0.5, "unet_weight": 0.25},
    ]
    assert (body["vae"], body["styles"]) == ("kl-f8.safetensors", ["cinematic"])


def test_request_field_spellings() -> None:
    req = ImageRequest.from_dict(
        {"prompt": "x", "loras": ["a", "b:0.5", {"name": "c", "weight": 2}], "hires": 2, "styles": "one"}
    )
    assert req.loras == (Lora("a"), Lora("b", 0.5), Lora("c", 2))
    assert req.hires == Hires(scale=2.0) and req.styles == ("one",)
    assert ImageRequest(prompt="x", loras=["a:b"]).loras == (Lora("a:b"),)  # not a weight: part of the name
    assert req.fingerprint() != req.replace(hires=Hires(scale=1.5)).fingerprint()
    with pytest.raises(TypeError):
        ImageRequest(prompt="x", hires="big")


def test_jobs_delete_and_retry() -> None:
    native = FakeNative(steps=1)
    client = client_for(native)
    job = client.jobs.submit("x", seed=4)
    with pytest.raises(ConflictError):
        client.jobs.retry(job.id)  # still queued
    client.jobs.wait(job.id)
    again = client.jobs.retry(job.id)
    assert again.id != job.id and again.request == job.request
    assert client.jobs.delete(job.id) is None
    assert "DELETE /api/v1/jobs/job_0001" in paths(native)
    assert job.id not in native.jobs


async def test_async_lean_path_uploads_delete_and_retry() -> None:
    native = FakeNative(steps=1, long_poll=True, uploads=True)
    async with AsyncClient("http://sdgate.test", transport=native.transport) as client:
        init = png_bytes((3, 3, 3))
        result = await client.img2img("x", init_image=init, seed=2)
        await client.img2img("x", init_image=init, seed=3)
        assert result.seeds == [2]
        assert paths(native) == ["POST /api/v1/uploads", "POST /api/v1/jobs", "POST /api/v1/jobs"]
        again = await client.jobs.retry("job_0001")
        assert again.id == "job_0003"
        await client.jobs.delete("job_0001")
        assert "job_0001" not in native.jobs
