"""Stability v2beta stable-image/generate through a real uvicorn on loopback."""

from __future__ import annotations

import base64
import io

import httpx
import pytest
from PIL import Image

from sdgate.core.requests import Mode
from sdgate.settings import Settings
from tests.fakes import FakeEngine
from tests.server.dialects.stability.loopback import default_model_defaults

URL = "/v2beta/stable-image/generate/{}"


def png_bytes(size: tuple[int, int]) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, "green").save(out, format="PNG")
    return out.getvalue()


@pytest.mark.parametrize("service", ["core", "sd3", "ultra"])
def test_image_accept_returns_bytes_and_headers(live: str, engine: FakeEngine, service: str) -> None:
    # The documented Python example: files={"none": ""} forces multipart, fields in data=.
    r = httpx.post(
        live + URL.format(service),
        headers={"authorization": "Bearer sk-x", "accept": "image/*"},
        files={"none": ""},
        data={"prompt": "a fox", "negative_prompt": "rain", "seed": "42", "output_format": "png"},
    )
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "image/png"
    assert r.headers["finish-reason"] == "SUCCESS"
    assert r.headers["seed"] == "42"
    assert Image.open(io.BytesIO(r.content)).format == "PNG"
    gen = engine.calls[-1]
    assert (gen.prompt, gen.negative_prompt, gen.seed, gen.mode) == ("a fox", "rain", 42, Mode.TXT2IMG)


@pytest.mark.parametrize(("fmt", "pil"), [("jpeg", "JPEG"), ("webp", "WEBP")])
def test_output_format(live: str, fmt: str, pil: str) -> None:
    r = httpx.post(
        live + URL.format("core"),
        files={"none": ""},
        data={"prompt": "x", "output_format": fmt},
        headers={"accept": "image/*"},
    )
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == f"image/{fmt}"
    assert Image.open(io.BytesIO(r.content)).format == pil


def test_json_accept_and_aspect_ratio(live: str, engine: FakeEngine, settings: Settings) -> None:
    defaults = default_model_defaults(settings)
    area = defaults.width * defaults.height
    r = httpx.post(
        live + URL.format("core"),
        files={"none": ""},
        data={"prompt": "wide", "aspect_ratio": "16:9"},
        headers={"accept": "application/json"},
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"image", "finish_reason", "seed"} and body["finish_reason"] == "SUCCESS"
    image = Image.open(io.BytesIO(base64.b64decode(body["image"])))
    w, h = image.size
    assert w % 64 == 0 and h % 64 == 0 and w > h
    assert abs(w * h - area) / area < 0.15  # about the model's native pixel count
    assert 0 < body["seed"] <= 4294967294


def test_sd3_image_to_image(live: str, engine: FakeEngine, settings: Settings) -> None:
    factor = default_model_defaults(settings).vae_scale_factor
    r = httpx.post(
        live + URL.format("sd3"),
        files={"image": ("i.png", png_bytes((200, 136)), "image/png")},
        data={
            "prompt": "p",
            "mode": "image-to-image",
            "strength": "0.4",
            "model": "sd3.5-large",
            "cfg_scale": "5",
        },
    )
    assert r.status_code == 200, r.text
    gen = engine.calls[-1]
    assert (gen.mode, gen.denoising_strength, gen.cfg_scale, gen.width, gen.height) == (
        Mode.IMG2IMG,
        0.4,
        5.0,
        200 - 200 % factor,  # the init image's size, rounded down to what the model can draw
        136 - 136 % factor,
    )


@pytest.mark.parametrize(
    ("service", "data", "status"),
    [
        ("core", {}, 400),
        ("core", {"prompt": "x", "aspect_ratio": "7:3"}, 400),
        ("core", {"prompt": "x", "output_format": "gif"}, 400),
        ("sd3", {"prompt": "x", "mode": "image-to-image"}, 400),
        ("core", {"prompt": "x", "seed": "4294967295"}, 400),
        ("nope", {"prompt": "x"}, 404),
        ("core", {"prompt": "boom"}, 500),
    ],
)
def test_errors(live: str, service: str, data: dict[str, str], status: int) -> None:
    r = httpx.post(live + URL.format(service), files={"none": ""}, data=data)
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"id", "name", "errors"}
    assert isinstance(body["errors"], list) and body["errors"][0]
