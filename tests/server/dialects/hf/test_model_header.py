"""Hugging Face, OpenAI and Stability map their clients' fixed model ids to a model of ours; the
response says which one ran in ``X-Sdgate-Model`` (their bodies have no field for it). A request
that leaves size out gets that model's own default size (512x512 for the built-in demo)."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import httpx
from PIL import Image

from sdgate.core.jobs import Job
from sdgate.server.model_aliases import MODEL_HEADER, model_header
from sdgate.settings import Settings
from tests.fakes import FakeEngine
from tests.harness import serve


def demo_only(tmp_path: Path) -> Settings:
    """Settings whose only model is the built-in demo (an empty models folder)."""
    return Settings(data_dir=tmp_path / "data", models_dir=tmp_path / "models", device="cpu")


def test_each_dialect_names_the_model_that_ran(tmp_path: Path) -> None:
    with serve(demo_only(tmp_path), FakeEngine()) as url:
        hf = httpx.post(f"{url}/models/stabilityai/stable-diffusion-xl-base-1.0", json={"inputs": "a"})
        assert hf.status_code == 200 and hf.headers[MODEL_HEADER] == "sdgate-demo-shapes"
        assert Image.open(io.BytesIO(hf.content)).size == (512, 512)  # the demo's default size

        openai = httpx.post(f"{url}/v1/images/generations",
                            json={"model": "dall-e-3", "prompt": "a", "response_format": "b64_json"})
        assert openai.status_code == 200 and openai.headers[MODEL_HEADER] == "sdgate-demo-shapes"
        image = Image.open(io.BytesIO(base64.b64decode(openai.json()["data"][0]["b64_json"])))
        assert image.size == (512, 512)

        stability = httpx.post(f"{url}/v1/generation/stable-diffusion-v1-6/text-to-image",
                               json={"text_prompts": [{"text": "a"}]})
        assert stability.status_code == 200 and stability.headers[MODEL_HEADER] == "sdgate-demo-shapes"
        png = httpx.post(f"{url}/v1/generation/stable-diffusion-v1-6/text-to-image",
                         json={"text_prompts": [{"text": "a"}]}, headers={"Accept": "image/png"})
        assert png.headers[MODEL_HEADER] == "sdgate-demo-shapes" and png.headers["Finish-Reason"]


def test_the_header_survives_any_model_name() -> None:
    job = Job.model_construct(result=type("R", (), {"model_name": "ünïcode model"})())
    assert model_header(job) == {MODEL_HEADER: "%C3%BCn%C3%AFcode model"}
    assert model_header(Job.model_construct(result=None)) == {}
