"""Hugging Face text-to-image through a real uvicorn: ``InferenceClient`` unchanged, raw shapes."""

from __future__ import annotations

import io
from pathlib import Path

import httpx
import pytest
from huggingface_hub import InferenceClient
from PIL import Image

from sdgate.settings import Settings
from tests.fakes import FakeEngine
from tests.harness import serve
from tests.server.dialects.stability.loopback import default_model_defaults, fresh

REPO = "stabilityai/stable-diffusion-xl-base-1.0"


@pytest.fixture
def loopback_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """The suite sets HF_HUB_OFFLINE=1, which blocks every request the client makes; these go to
    our own server on loopback only."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)


@pytest.mark.usefixtures("loopback_only")
def test_inference_client_text_to_image(live: str, engine: FakeEngine) -> None:
    client = InferenceClient(model=f"{live}/models/{REPO}", token="hf_local")
    image = client.text_to_image(
        "an astronaut riding a horse",
        negative_prompt="low quality",
        width=384,
        height=256,
        num_inference_steps=12,
        guidance_scale=5.5,
        seed=99,
        scheduler="EulerAncestralDiscreteScheduler",
    )
    assert image.size == (384, 256)
    gen = engine.calls[-1]
    assert (gen.prompt, gen.negative_prompt, gen.steps, gen.cfg_scale, gen.seed, gen.sampler) == (
        "an astronaut riding a horse",
        "low quality",
        12,
        5.5,
        99,
        "Euler a",
    )


def test_old_spellings_and_accept(live: str, engine: FakeEngine, settings: Settings) -> None:
    defaults = default_model_defaults(settings)
    body = {
        "inputs": "a cat",
        "parameters": {
            "negative_prompt": ["dog", "bird"],
            "target_size": {"width": 320, "height": 192},
            "seed": 1,
            "guidance_scale": 6,
        },
        "options": {"use_cache": False, "wait_for_model": True},
    }
    r = httpx.post(
        f"{live}/models/runwayml/stable-diffusion-v1-5", json=body, headers={"Accept": "image/jpeg"}
    )
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "image/jpeg"
    assert Image.open(io.BytesIO(r.content)).size == (320, 192)
    assert engine.calls[-1].negative_prompt == "dog, bird"
    r = httpx.post(f"{live}/models/x", json={"inputs": "a", "parameters": {}}, headers={"accept": "*/*"})
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(r.content)).size == (defaults.width, defaults.height)  # native size


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"parameters": {}}, 422),
        ({"inputs": "a", "parameters": {"width": "wide"}}, 422),
        ({"inputs": "a", "parameters": {"width": 500}}, 422),  # the schema: multiples of 8
        ({"inputs": "a" * 32001}, 422),  # the schema's max length (the 50 MB prompt of issue 13)
        ({"inputs": "a", "parameters": {"seed": False}}, 422),  # not 0
        ({"inputs": "a", "parameters": {"num_inference_steps": "20"}}, 422),
        ({"inputs": "a", "parameters": {"width": 4096}}, 422),
        ({"inputs": "a", "parameters": {"scheduler": "NoSuchScheduler"}}, 400),
        ({"inputs": "boom"}, 500),
    ],
)
def test_error_shapes(live: str, body: dict[str, object], status: int) -> None:
    r = httpx.post(f"{live}/models/{REPO}", json=body)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert isinstance(error, list if status == 422 else str) and error


@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity", "1e999"])
def test_non_finite_guidance_is_refused_in_hf_shape(live: str, engine: FakeEngine, value: str) -> None:
    before = len(engine.calls)
    body = '{"inputs": "a", "parameters": {"guidance_scale": ' + value + '}}'
    r = httpx.post(f"{live}/models/{REPO}", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 422, r.text
    assert r.json()["error"] == ["parameters.guidance_scale: Input should be a finite number"]
    assert len(engine.calls) == before


def test_strict_unknown_repo_is_404(settings: Settings, tmp_path: Path) -> None:
    with serve(fresh(settings, tmp_path, strict_models=True), FakeEngine()) as url:
        r = httpx.post(f"{url}/models/someone/unknown-model", json={"inputs": "a"})
        assert r.status_code == 404 and "unknown-model" in r.json()["error"]
        assert httpx.post(f"{url}/models/{REPO}", json={"inputs": "a"}).status_code == 200
        # a newline or other control character in the id still reaches this route (Starlette's
        # ``path`` stops at a newline; ComfyUI's GET /models/{folder} would have answered 405)
        r = httpx.post(f"{url}/models/some%0Aone/un%0Dknown", json={"inputs": "a"})
        assert r.status_code == 404 and "error" in r.json(), r.text


def test_unknown_parameters_are_accepted_and_logged(live: str, caplog: pytest.LogCaptureFixture) -> None:
    body = {"inputs": "a", "parameters": {"num_images_per_prompt": 1, "clip_skip": 2}, "stream": False}
    with caplog.at_level("INFO", logger="sdgate.hf"):
        assert httpx.post(f"{live}/models/{REPO}", json=body).status_code == 200
        assert httpx.post(f"{live}/models/{REPO}", json=body).status_code == 200
    assert caplog.text.count("parameters.clip_skip") == 1  # once, not per request
