"""`sdgate generate` against the real app: an unknown name is `NotFoundError: ...` and exit 1 with
no job made; no --size means the model's own default size (issue 12, items 2 and 3)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image
from typer.testing import CliRunner

from sdgate.cli.main import app as sdgate_app
from sdgate.settings import Settings
from tests.fakes import write_fake_checkpoint
from tests.sdk.conftest import ThreadedServer

runner = CliRunner()


@pytest.fixture
def demo_server(tmp_path: Path) -> Iterator[ThreadedServer]:
    """A server whose only model is the built-in demo (an empty models folder)."""
    settings = Settings(data_dir=tmp_path / "data", models_dir=tmp_path / "models", device="cpu",
                        worker_poll_s=0.02)
    with ThreadedServer(settings) as server:
        yield server


@pytest.fixture
def sd_server(tmp_path: Path) -> Iterator[ThreadedServer]:
    write_fake_checkpoint(tmp_path / "models" / "Stable-diffusion" / "alpha.safetensors")
    settings = Settings(data_dir=tmp_path / "data", models_dir=tmp_path / "models", device="cpu",
                        worker_poll_s=0.02)
    with ThreadedServer(settings) as server:
        yield server


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--model", "nosuch-model"],
         "model: no model named 'nosuch-model'; see GET /api/v1/models or sdgate models"),
        (["--lora", "nosuch-lora:0.7"], "loras.0.name: no LoRA named 'nosuch-lora'; see GET /api/v1/loras"),
        (["--style", "nosuch-style"], "styles.0: no style named 'nosuch-style'; see GET /api/v1/styles"),
        (["--vae", "nosuch-vae"], "vae: no VAE named 'nosuch-vae'; see GET /api/v1/vaes"),
    ],
    ids=["model", "lora", "style", "vae"],
)
def test_an_unknown_name_exits_1_and_makes_no_job(
    sd_server: ThreadedServer, tmp_path: Path, flags: list[str], message: str
) -> None:
    out = tmp_path / "out"
    result = runner.invoke(
        sdgate_app, ["generate", "a cat", *flags, "-o", str(out), "--backend", sd_server.url, "--retries=0"]
    )
    assert result.exit_code == 1, result.output
    line = result.stderr.strip()
    assert re.fullmatch(rf"NotFoundError: 404: {re.escape(message)} \(request id \w+\)", line), line
    assert not out.exists() or not list(out.iterdir())
    assert httpx.get(f"{sd_server.url}/api/v1/jobs").json()["jobs"] == []


def test_a_lora_tag_in_the_prompt_is_checked_too(sd_server: ThreadedServer, tmp_path: Path) -> None:
    result = runner.invoke(
        sdgate_app, ["generate", "a cat <lora:gone:0.5>", "-o", str(tmp_path), "--backend", sd_server.url]
    )
    assert result.exit_code == 1
    assert "prompt: no LoRA named 'gone'" in result.stderr


def test_no_size_means_the_models_default_size(demo_server: ThreadedServer, tmp_path: Path) -> None:
    models = httpx.get(f"{demo_server.url}/api/v1/models").json()
    assert [(m["name"], m["width"], m["height"], m["vae_scale_factor"]) for m in models] == [
        ("sdgate-demo-shapes", 512, 512, 16)
    ]
    result = runner.invoke(
        sdgate_app,
        ["generate", "a red circle", "--steps=1", "-o", str(tmp_path), "-b", demo_server.url, "--json"],
    )
    assert result.exit_code == 0, result.output
    image = json.loads(result.stdout)["images"][0]
    assert Image.open(image).size == (512, 512)


def test_a_size_off_the_vae_factor_is_a_400_naming_it(demo_server: ThreadedServer, tmp_path: Path) -> None:
    result = runner.invoke(
        sdgate_app, ["generate", "x", "--size", "520x512", "-o", str(tmp_path), "--backend", demo_server.url]
    )
    assert result.exit_code == 1
    assert result.stderr.startswith(
        "BadRequestError: 400: width: must be a multiple of 16 for model sdgate-demo-shapes, got 520"
    )


def test_help_states_the_size_rule() -> None:
    result = runner.invoke(sdgate_app, ["generate", "--help"], env={"COLUMNS": "200"})
    text = " ".join(result.stdout.replace("│", " ").split())
    assert "multiple of the model's VAE factor (8 for Stable Diffusion, 16 for the demo model" in text
    assert "Left out: the model's own default size" in text
