"""``sdgate batch`` takes ``generate``'s request flags, from one shared definition, as defaults for
every line; a JSONL line's own fields win."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer
from typer.main import get_command
from typer.testing import CliRunner

from sdgate.cli import common
from tests.sdk.fakes import FakeNative

runner = CliRunner()

FLAGS = ["--n", "2", "--n-iter", "3", "--sampler", "Euler a", "--scheduler", "karras", "--cfg", "5.5"]
FLAGS += ["--negative", "blurry", "--subseed", "4", "--subseed-strength", "0.2", "--seed", "9"]
FLAGS += ["--hires", "2.0", "--hires-steps", "5", "--hires-strength", "0.5", "--hires-upscaler", "Lanczos"]
FLAGS += ["--lora", "detail:0.7", "--lora", "style", "--vae", "kl.safetensors", "--style", "cinematic"]
FLAGS += ["--clip-skip", "2", "--tiling", "--steps", "7", "--size", "64x32", "--model", "m"]


def bodies(native: FakeNative) -> dict[str, dict]:
    """The submitted job bodies by prompt."""
    out = {}
    for r in native.requests:
        if r.method == "POST" and r.url.path == "/api/v1/jobs":
            body = json.loads(r.content)
            out[body["prompt"]] = body
    return out


EVERY_FLAG = {
    "batch_size": 2,
    "n_iter": 3,
    "sampler": "Euler a",
    "scheduler": "karras",
    "cfg_scale": 5.5,
    "negative_prompt": "blurry",
    "subseed": 4,
    "subseed_strength": 0.2,
    "seed": 9,
    "hires": {
        "scale": 2.0,
        "second_pass_steps": 5,
        "denoising_strength": 0.5,
        "upscaler": "Lanczos",
        "resize_x": 0,
        "resize_y": 0,
        "prompt": "",
        "negative_prompt": "",
    },
    "loras": [
        {"name": "detail", "te_weight": 0.7, "unet_weight": 0.7},
        {"name": "style", "te_weight": 1.0, "unet_weight": 1.0},
    ],
    "vae": "kl.safetensors",
    "styles": ["cinematic"],
    "clip_skip": 2,
    "tiling": True,
    "steps": 7,
    "width": 64,
    "height": 32,
    "model": "m",
}


def test_every_flag_reaches_every_txt_line(app: typer.Typer, native: FakeNative, tmp_path: Path) -> None:
    prompts = tmp_path / "p.txt"
    prompts.write_text("a cat\na dog\n")
    result = runner.invoke(app, ["batch", str(prompts), "-o", str(tmp_path / "out"), *FLAGS])
    assert result.exit_code == 0, result.output
    sent = bodies(native)
    assert set(sent) == {"a cat", "a dog"}
    for body in sent.values():
        assert {k: body.get(k) for k in EVERY_FLAG} == EVERY_FLAG


def test_a_jsonl_lines_own_fields_win(app: typer.Typer, native: FakeNative, tmp_path: Path) -> None:
    lines = [
        {
            "prompt": "own",
            "n": 1,
            "sampler": "DDIM",
            "cfg_scale": 3.0,
            "negative_prompt": "",
            "seed": 1,
            "hires": 1.5,
            "loras": ["other:0.5"],
            "styles": [],
            "tiling": False,
            "width": 128,
        },
        {"prompt": "plain"},
    ]
    jsonl = tmp_path / "p.jsonl"
    jsonl.write_text("".join(json.dumps(line) + "\n" for line in lines))
    args = ["batch", str(jsonl), "-o", str(tmp_path / "out"), "--sampler", "Euler a", "--cfg", "5.5"]
    args += ["--negative", "blurry", "--hires", "2.0", "--lora", "detail:0.7", "--style", "cinematic"]
    args += ["--tiling", "--size", "64x32", "--seed", "9", "-n", "2"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    own, plain = bodies(native)["own"], bodies(native)["plain"]
    assert (own["sampler"], own["cfg_scale"], own["negative_prompt"], own["seed"], own["batch_size"]) == (
        "DDIM",
        3.0,
        "",
        1,
        1,
    )
    assert own["hires"]["scale"] == 1.5 and [x["name"] for x in own["loras"]] == ["other"]
    assert "styles" not in own and "tiling" not in own
    assert (own["width"], own["height"]) == (128, 32)  # the line's width, the flag's height
    assert (plain["sampler"], plain["cfg_scale"], plain["negative_prompt"], plain["seed"]) == (
        "Euler a",
        5.5,
        "blurry",
        9,
    )
    assert plain["batch_size"] == 2 and plain["hires"]["scale"] == 2.0 and plain["tiling"] is True
    assert [x["name"] for x in plain["loras"]] == ["detail"] and plain["styles"] == ["cinematic"]


def test_without_flags_the_lines_go_as_they_are(app: typer.Typer, native: FakeNative, tmp_path: Path) -> None:
    prompts = tmp_path / "p.txt"
    prompts.write_text("x\n")
    result = runner.invoke(app, ["batch", str(prompts), "-o", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert bodies(native)["x"] == {"prompt": "x", "negative_prompt": "", "batch_size": 1, "priority": 0}


def test_usage_errors_are_the_same_as_generates(app: typer.Typer, native: FakeNative, tmp_path: Path) -> None:
    prompts = tmp_path / "p.txt"
    prompts.write_text("x\n")
    out = str(tmp_path / "out")
    hires = runner.invoke(app, ["batch", str(prompts), "-o", out, "--hires-steps", "5"])
    assert hires.exit_code == 2 and "need --hires SCALE" in hires.stderr
    size = runner.invoke(app, ["batch", str(prompts), "-o", out, "--size", "big"])
    assert size.exit_code == 2 and "WIDTHxHEIGHT" in size.stderr
    assert runner.invoke(app, ["batch", str(prompts), "-o", out, "--clip-skip", "13"]).exit_code == 2
    assert native.requests == []


def test_generate_and_batch_share_one_definition_of_the_flags(app: typer.Typer) -> None:
    group = get_command(app)

    def options(name: str) -> dict[str, Any]:
        return {p.name: p for p in group.commands[name].params if p.param_type_name == "option"}  # type: ignore[attr-defined]

    generate, batch = options("generate"), options("batch")
    names = [flag.name for flag in common.REQUEST_FLAGS]
    assert len(names) > 15
    for name in names:
        assert generate[name].opts == batch[name].opts and generate[name].help == batch[name].help
    assert set(generate) - set(batch) == {"init", "strength", "mask"}
    assert set(batch) - set(generate) == {"concurrency"}
