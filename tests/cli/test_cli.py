"""The `sdgate` command line, through typer's runner (no server started)."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from sdgate.cli.main import app
from tests.fakes import write_fake_checkpoint

runner = CliRunner()


def make_models(root: Path) -> Path:
    write_fake_checkpoint(root / "Stable-diffusion" / "one.safetensors")
    write_fake_checkpoint(root / "checkpoints" / "two.safetensors")  # ComfyUI layout
    return root


def test_models_lists_a1111_and_comfyui_layouts(tmp_path: Path) -> None:
    models = make_models(tmp_path / "models")
    result = runner.invoke(app, ["models", "--models-dir", str(models), "--data-dir", str(tmp_path / "d"),
                                 "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    names = {r["name"] for r in rows}
    assert {"one", "two"} <= names
    assert sum(r["default"] for r in rows) == 1


def test_models_plain_output(tmp_path: Path) -> None:
    models = make_models(tmp_path / "models")
    result = runner.invoke(app, ["models", "--models-dir", str(models), "--data-dir", str(tmp_path / "d")])
    assert result.exit_code == 0
    assert "one" in result.output and "two" in result.output


def test_serve_rejects_bad_auth_with_usage_error(tmp_path: Path) -> None:
    result = runner.invoke(app, ["serve", "--api-auth", "nocolon", "--data-dir", str(tmp_path)])
    assert result.exit_code == 2
    assert "api-auth" in result.output
    assert "Traceback" not in result.output


def test_serve_rejects_missing_model_file(tmp_path: Path) -> None:
    result = runner.invoke(app, ["serve", "--model", str(tmp_path / "nope.safetensors"),
                                 "--data-dir", str(tmp_path)])
    assert result.exit_code == 2
    assert "does not exist" in result.output


def test_serve_rejects_bad_device(tmp_path: Path) -> None:
    result = runner.invoke(app, ["serve", "--device", "gpu0", "--data-dir", str(tmp_path)])
    assert result.exit_code == 2
    assert "device" in result.output


def test_version() -> None:
    result = runner.invoke(app, ["version"])
    assert result.exit_code == 0 and result.output.strip()
