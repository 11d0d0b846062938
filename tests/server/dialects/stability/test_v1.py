"""Stability v1 through a real uvicorn on loopback: reference shapes, error shapes, translation."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import httpx
import pytest
from PIL import Image

from sdgate.core.requests import Mode
from sdgate.jobs.images import LocalImageStore
from sdgate.settings import Settings
from tests.fakes import FakeEngine
from tests.harness import serve
from tests.server.dialects.stability.loopback import default_model_defaults, fresh

T2I = "/v1/generation/stable-diffusion-v1-6/text-to-image"


def png_bytes(size: tuple[int, int], colour: object = "red", mode: str = "RGB") -> bytes:
    out = io.BytesIO()
    Image.new(mode, size, colour).save(out, format="PNG")  # type: ignore[arg-type]
    return out.getvalue()


def stored(settings: Settings, image_id: str | None) -> Image.Image:
    assert image_id is not None
    return Image.open(io.BytesIO(LocalImageStore(settings.images_dir).get(image_id)))


def assert_error(r: httpx.Response, status: int, name: str) -> None:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"id", "name", "message"}
    assert body["name"] == name
    assert body["id"] and body["message"]


def test_engines_account_balance(live: str) -> None:
    engines = httpx.get(live + "/v1/engines/list").json()
    assert isinstance(engines, list)
    ids = {e["id"] for e in engines}
    assert {"stable-diffusion-v1-6", "stable-diffusion-xl-1024-v1-0", "alpha"} <= ids
    assert all(set(e) == {"id", "name", "description", "type"} and e["type"] == "PICTURE" for e in engines)
    account = httpx.get(live + "/v1/user/account").json()
    assert set(account) == {"id", "email", "profile_picture", "organizations"}
    assert set(account["organizations"][0]) == {"id", "name", "role", "is_default"}
    assert isinstance(httpx.get(live + "/v1/user/balance").json()["credits"], float)


def test_text_to_image_json(live: str, engine: FakeEngine) -> None:
    body = {
        "text_prompts": [
            {"text": "a lighthouse", "weight": 1},
            {"text": "blurry", "weight": -1},
            {"text": "storm", "weight": 0.5},
            {"text": "people", "weight": -0.7},
        ],
        "cfg_scale": 6,
        "height": 640,
        "width": 512,
        "samples": 2,
        "steps": 12,
        "seed": 1234,
        "sampler": "K_DPMPP_2M",
        "style_preset": "photographic",
        "clip_guidance_preset": "FAST_BLUE",
    }
    r = httpx.post(
        live + T2I, json=body, headers={"Accept": "application/json", "Authorization": "Bearer sk-x"}
    )
    assert r.status_code == 200, r.text
    artifacts = r.json()["artifacts"]
    assert [a["seed"] for a in artifacts] == [1234, 1235]
    assert all(a["finishReason"] == "SUCCESS" for a in artifacts)
    assert Image.open(io.BytesIO(base64.b64decode(artifacts[0]["base64"]))).size == (512, 640)
    gen = engine.calls[-1]
    assert gen.prompt.startswith("a lighthouse, (storm:0.5), photograph")
    assert gen.negative_prompt == "blurry, (people:0.7)"
    assert (gen.steps, gen.cfg_scale, gen.batch_size, gen.sampler, gen.scheduler) == (
        12,
        6,
        2,
        "DPM++ 2M",
        "karras",
    )


def test_text_to_image_png_headers_and_defaults(live: str, engine: FakeEngine, settings: Settings) -> None:
    defaults = default_model_defaults(settings, "stable-diffusion-v1-6")
    r = httpx.post(live + T2I, json={"text_prompts": [{"text": "a cat"}]}, headers={"Accept": "image/png"})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "image/png"
    assert r.headers["finish-reason"] == "SUCCESS"
    seed = int(r.headers["seed"])
    assert 0 < seed <= 4294967295  # seed 0 (the default) means random
    assert Image.open(io.BytesIO(r.content)).size == (defaults.width, defaults.height)  # native size
    assert engine.calls[-1].steps == defaults.steps  # the model's default steps, not Stability's
    assert engine.calls[-1].sampler == "Euler"


@pytest.mark.parametrize(
    ("patch", "status", "name"),
    [
        ({"steps": 151}, 400, "bad_request"),
        ({"steps": 9}, 400, "bad_request"),
        ({"width": 500}, 400, "invalid_height_or_width"),
        ({"height": 64}, 400, "invalid_height_or_width"),
        ({"samples": 11}, 400, "invalid_samples"),
        ({"cfg_scale": 36}, 400, "bad_request"),
        ({"seed": 4294967296}, 400, "bad_request"),
        ({"sampler": "K_NOPE"}, 400, "bad_request"),
        ({"style_preset": "vaporwave"}, 400, "bad_request"),
        ({"text_prompts": []}, 400, "bad_request"),
        ({"text_prompts": [{"text": "boom"}]}, 500, "server_error"),
    ],
)
def test_text_to_image_errors(live: str, patch: dict[str, object], status: int, name: str) -> None:
    body = {"text_prompts": [{"text": "a cat"}], "steps": 10, **patch}
    assert_error(httpx.post(live + T2I, json=body), status, name)


def test_steps_150_accepted_and_png_with_samples_refused(live: str) -> None:
    ok = httpx.post(live + T2I, json={"text_prompts": [{"text": "a"}], "steps": 150})
    assert ok.status_code == 200, ok.text
    r = httpx.post(
        live + T2I, json={"text_prompts": [{"text": "a"}], "samples": 2}, headers={"Accept": "image/png"}
    )
    assert_error(r, 400, "invalid_samples")


def test_unknown_engine_default_and_strict(live: str, settings: Settings, tmp_path: Path) -> None:
    body = {"text_prompts": [{"text": "a"}], "steps": 10}
    assert httpx.post(live + "/v1/generation/some-fake-engine/text-to-image", json=body).status_code == 200
    with serve(fresh(settings, tmp_path, strict_models=True), FakeEngine()) as url:
        r = httpx.post(url + "/v1/generation/some-fake-engine/text-to-image", json=body)
        assert_error(r, 404, "not_found")
        assert httpx.post(url + T2I, json=body).status_code == 200  # a known engine id still works


def form_prompts(**extra: str) -> dict[str, str]:
    return {
        "text_prompts[0][text]": "a boat",
        "text_prompts[0][weight]": "1",
        "text_prompts[1][text]": "fog",
        "text_prompts[1][weight]": "-1",
        "steps": "10",
        "seed": "7",
        **extra,
    }


@pytest.mark.parametrize(
    ("fields", "strength"),
    [
        ({}, 0.65),
        ({"image_strength": "0.8"}, 0.2),
        ({"init_image_mode": "STEP_SCHEDULE", "step_schedule_start": "0.4", "step_schedule_end": "0.1"}, 0.4),
    ],
)
def test_image_to_image_modes(
    live: str, engine: FakeEngine, settings: Settings, fields: dict[str, str], strength: float
) -> None:
    files = {"init_image": ("init.png", png_bytes((320, 192)), "image/png")}
    r = httpx.post(
        live + "/v1/generation/stable-diffusion-v1-6/image-to-image", data=form_prompts(**fields), files=files
    )
    assert r.status_code == 200, r.text
    gen = engine.calls[-1]
    assert gen.mode == Mode.IMG2IMG
    assert (gen.prompt, gen.negative_prompt, gen.seed) == ("a boat", "fog", 7)
    assert gen.denoising_strength == pytest.approx(strength)
    assert (gen.width, gen.height) == (320, 192)  # dimensions from the init image
    assert stored(settings, gen.init_images[0]).size == (320, 192)


def test_image_to_image_requires_init_image(live: str) -> None:
    r = httpx.post(
        live + "/v1/generation/stable-diffusion-v1-6/image-to-image",
        data=form_prompts(),
        files={"none": ("", b"")},
    )
    assert_error(r, 400, "bad_request")
    assert r.json()["message"] == "init_image: is required"


def half_mask(size: tuple[int, int], left: int, right: int, mode: str = "L") -> bytes:
    image = Image.new(mode, size, right)  # type: ignore[arg-type]
    image.paste(left, (0, 0, size[0] // 2, size[1]))  # type: ignore[arg-type]
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


@pytest.mark.parametrize("source", ["MASK_IMAGE_WHITE", "MASK_IMAGE_BLACK", "INIT_IMAGE_ALPHA"])
def test_masking_sources_normalise_to_white_is_change(
    live: str, engine: FakeEngine, settings: Settings, source: str
) -> None:
    """Each source marks the LEFT half for repainting; the stored mask is white there."""
    size = (128, 64)
    files: dict[str, tuple[str, bytes, str]] = {"init_image": ("i.png", png_bytes(size), "image/png")}
    if source == "MASK_IMAGE_WHITE":
        files["mask_image"] = ("m.png", half_mask(size, 255, 0), "image/png")
    elif source == "MASK_IMAGE_BLACK":
        files["mask_image"] = ("m.png", half_mask(size, 0, 255), "image/png")
    else:
        rgba = Image.new("RGBA", size, (0, 0, 255, 255))
        rgba.paste((0, 0, 0, 0), (0, 0, size[0] // 2, size[1]))
        out = io.BytesIO()
        rgba.save(out, format="PNG")
        files["init_image"] = ("i.png", out.getvalue(), "image/png")
    r = httpx.post(
        live + "/v1/generation/stable-diffusion-v1-6/image-to-image/masking",
        data=form_prompts(mask_source=source),
        files=files,
    )
    assert r.status_code == 200, r.text
    gen = engine.calls[-1]
    assert gen.mode == Mode.INPAINT and not gen.inpainting_mask_invert
    assert gen.denoising_strength == 1.0
    mask = stored(settings, gen.mask).convert("L")
    assert mask.size == size
    assert mask.getpixel((2, 2)) == 255 and mask.getpixel((size[0] - 2, 2)) == 0


def test_masking_errors(live: str) -> None:
    url = live + "/v1/generation/stable-diffusion-v1-6/image-to-image/masking"
    init = ("i.png", png_bytes((128, 64)), "image/png")
    r = httpx.post(url, data=form_prompts(mask_source="MASK_IMAGE_WHITE"), files={"init_image": init})
    assert_error(r, 400, "invalid_mask_image")
    wrong = ("m.png", half_mask((64, 64), 255, 0), "image/png")
    r = httpx.post(
        url,
        data=form_prompts(mask_source="MASK_IMAGE_WHITE"),
        files={"init_image": init, "mask_image": wrong},
    )
    assert_error(r, 400, "invalid_image_dimensions")
    r = httpx.post(url, data=form_prompts(mask_source="INIT_IMAGE_ALPHA"), files={"init_image": init})
    assert_error(r, 400, "invalid_mask_image")
    r = httpx.post(url, data=form_prompts(), files={"init_image": init})
    assert_error(r, 400, "bad_request")
    bad = ("i.png", b"not an image", "image/png")
    r = httpx.post(url, data=form_prompts(mask_source="INIT_IMAGE_ALPHA"), files={"init_image": bad})
    assert_error(r, 400, "bad_request")


def test_upscale(live: str, engine: FakeEngine) -> None:
    files = {"image": ("i.png", png_bytes((96, 64)), "image/png")}
    r = httpx.post(
        live + "/v1/generation/esrgan-v1-x2plus/image-to-image/upscale",
        files=files,
        headers={"Accept": "image/png"},
    )
    assert r.status_code == 200, r.text
    assert Image.open(io.BytesIO(r.content)).size == (192, 128)
    r = httpx.post(
        live + "/v1/generation/esrgan-v1-x2plus/image-to-image/upscale", files=files, data={"width": "1024"}
    )
    assert r.status_code == 200, r.text
    image = Image.open(io.BytesIO(base64.b64decode(r.json()["artifacts"][0]["base64"])))
    assert image.size == (1024, 683)
    r = httpx.post(
        live + "/v1/generation/esrgan-v1-x2plus/image-to-image/upscale",
        files=files,
        data={"width": "1024", "height": "1024"},
    )
    assert_error(r, 400, "invalid_height_or_width")
    r = httpx.post(
        live + "/v1/generation/stable-diffusion-x4-latent-upscaler/image-to-image/upscale",
        files=files,
        data={"text_prompts[0][text]": "sharp", "seed": "3", "steps": "10"},
    )
    assert r.status_code == 200, r.text
    gen = engine.calls[-1]
    assert (gen.mode, gen.width, gen.height, gen.prompt, gen.seed) == (Mode.IMG2IMG, 192, 128, "sharp", 3)


def test_unknown_fields_are_accepted(live: str, caplog: pytest.LogCaptureFixture) -> None:
    body = {
        "text_prompts": [{"text": "a", "weight": 1, "mood": "x"}],
        "steps": 10,
        "extras": {"a": 1},
        "frobnicate": True,
    }
    with caplog.at_level("INFO", logger="sdgate.stability"):
        assert httpx.post(live + T2I, json=body).status_code == 200
    assert "frobnicate" in caplog.text
