"""``sdgate demo``: the CLI stays torch-free at import; ``train --smoke`` runs end to end and resumes."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner


def test_importing_the_demo_cli_does_not_import_torch() -> None:
    code = "import sys, sdgate.cli.demo; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_eval_rejects_an_unknown_sampler() -> None:
    from sdgate.cli.demo import app

    result = CliRunner().invoke(app, ["eval", "--sampler", "nope", "--n-one", "1", "--n-two", "0"])
    assert result.exit_code == 2


@pytest.mark.slow
def test_train_smoke_runs_end_to_end_resumes_and_exports(tmp_path: Path) -> None:
    import torch
    from diffusers import StableDiffusionPipeline

    from sdgate.cli.demo import app

    ckpt, export = tmp_path / "ckpt", tmp_path / "pipe"
    started = time.monotonic()
    runner = CliRunner()
    first = runner.invoke(app, ["train", "--smoke", "--ckpt-dir", str(ckpt), "--unet-steps", "6"])
    assert first.exit_code == 0, first.output
    assert json.loads((ckpt / "state.json").read_text())["step"] == 6
    second = runner.invoke(app, ["train", "--smoke", "--ckpt-dir", str(ckpt), "--export", str(export)])
    assert second.exit_code == 0, second.output
    assert "resumed" in second.output
    assert json.loads((ckpt / "state.json").read_text())["step"] == 12

    pipe = StableDiffusionPipeline.from_pretrained(str(export), dtype=torch.float32, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    image = pipe("a red circle", height=128, width=128, num_inference_steps=2).images[0]
    assert image.size == (128, 128)
    assert time.monotonic() - started < 300


@pytest.mark.slow
def test_eval_prints_a_json_report_with_cpu_seconds() -> None:
    from sdgate.cli.demo import app

    args = ["eval", "--n-one", "2", "--n-two", "1", "--size", "256", "--steps", "8", "--time-images", "1",
            "--json", "--no-check"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    body = json.loads(result.stdout)
    assert set(body["one"]) == {"background", "color", "shape", "position"}
    wall, cpu = body["single_image"]
    assert wall > 0 and cpu > 0
