"""The client commands (generate, batch, jobs, info) through typer's runner, against the fake
native API (MockTransport) and the real app's A1111 routes for info."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import typer
from PIL import Image
from typer.testing import CliRunner

from sdgate.cli import common, generate
from sdgate.client import Client
from tests.sdk.conftest import ThreadedServer
from tests.sdk.fakes import FakeNative, png_bytes


@pytest.fixture
def app() -> typer.Typer:
    app = typer.Typer(add_completion=False)
    generate.mount(app)
    return app


@pytest.fixture
def native(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeNative]:
    fake = FakeNative(steps=2)
    seen: list[common.ClientOptions] = []

    def make_client(options: common.ClientOptions) -> Client:
        seen.append(options)
        url = options.backend or "http://sdgate.test"
        return Client(url, api_key=options.api_key, max_retries=0, transport=fake.transport)

    monkeypatch.setattr(common, "make_client", make_client)
    fake.options = seen  # type: ignore[attr-defined]
    yield fake


runner = CliRunner()


def test_generate_saves_images_and_prints_paths(app: typer.Typer, native: FakeNative, tmp_path: Path) -> None:
    result = runner.invoke(
        app,
        [
            "generate",
            "a red circle",
            "-n",
            "2",
            "--steps",
            "20",
            "--size",
            "768x512",
            "--seed",
            "42",
            "-o",
            str(tmp_path),
            "--api-key",
            "sk-1",
        ],
    )
    assert result.exit_code == 0, result.output
    body = json.loads(native.requests[0].content)
    assert (body["width"], body["height"], body["steps"], body["seed"], body["batch_size"]) == (
        768,
        512,
        20,
        42,
        2,
    )
    assert native.requests[0].headers["authorization"] == "Bearer sk-1"
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 2 and lines[0].endswith("seed 42")
    saved = sorted(tmp_path.glob("*.png"))
    assert [p.name for p in saved] == ["job_0001-0.png", "job_0001-1.png"]
    assert Image.open(saved[0]).info["parameters"] == "a red circle\nSeed: 42"


def test_generate_json_and_img2img(app: typer.Typer, native: FakeNative, tmp_path: Path) -> None:
    init = tmp_path / "init.png"
    init.write_bytes(png_bytes())
    mask = tmp_path / "mask.png"
    mask.write_bytes(png_bytes((255, 255, 255)))
    result = runner.invoke(
        app,
        [
            "generate",
            "x",
            "--init",
            str(init),
            "--mask",
            str(mask),
            "--strength",
            "0.5",
            "-o",
            str(tmp_path / "out"),
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["job_id"] == "job_0001" and len(data["images"]) == 1 and data["seeds"] == [7]
    body = next(json.loads(r.content) for r in native.requests if r.url.path == "/api/v1/jobs")
    assert body["denoising_strength"] == 0.5 and body["mask"] and body["init_image"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["generate", "x", "--size", "big"], "--size"),
        (["generate", "x", "--mask", "{mask}"], "--mask needs --init"),
        (["generate", "x", "--steps", "0"], "steps"),
        (["generate"], "Missing argument"),
        (["generate", "x", "--backend", "nope+http://x"], "unknown backend"),
    ],
)
def test_usage_errors_exit_2(
    app: typer.Typer, native: FakeNative, tmp_path: Path, args: list[str], message: str
) -> None:
    mask = tmp_path / "m.png"
    mask.write_bytes(png_bytes())
    result = runner.invoke(app, [a.replace("{mask}", str(mask)) for a in args])
    assert result.exit_code == 2
    assert message in result.stderr
    assert "Traceback" not in result.output


def test_api_errors_exit_1_with_one_line(app: typer.Typer, native: FakeNative, tmp_path: Path) -> None:
    result = runner.invoke(app, ["generate", "please fail", "-o", str(tmp_path)])
    assert result.exit_code == 1
    assert result.stderr.strip() == "JobFailedError: job job_0001 failed: the engine exploded"
    result = runner.invoke(app, ["jobs", "show", "job_missing"])
    assert result.exit_code == 1 and result.stderr.startswith("NotFoundError: 404: no such job")


def test_network_errors_exit_1(app: typer.Typer, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused")

    monkeypatch.setattr(
        common,
        "make_client",
        lambda o: Client("http://x", max_retries=0, transport=httpx.MockTransport(refuse)),
    )
    result = runner.invoke(app, ["generate", "x"])
    assert result.exit_code == 1 and result.stderr.startswith("APIConnectionError: connection error")


def test_jobs_commands(app: typer.Typer, native: FakeNative, tmp_path: Path) -> None:
    client = Client("http://sdgate.test", transport=native.transport)
    job = client.jobs.submit("a red circle", seed=3)
    listed = runner.invoke(app, ["jobs", "list"])
    assert listed.exit_code == 0 and listed.stdout.startswith(f"{job.id}  queued")
    assert json.loads(runner.invoke(app, ["jobs", "list", "--json"]).stdout)[0]["id"] == job.id
    shown = runner.invoke(app, ["jobs", "show", job.id])
    assert shown.exit_code == 0 and "running" in shown.stdout
    watched = runner.invoke(app, ["jobs", "watch", job.id, "-o", str(tmp_path)])
    assert watched.exit_code == 0, watched.output
    assert (tmp_path / f"{job.id}-0.png").exists()
    other = client.jobs.submit("b")
    cancelled = runner.invoke(app, ["jobs", "cancel", other.id, "--json"])
    assert json.loads(cancelled.stdout)["state"] == "cancelled"
    assert runner.invoke(app, ["jobs", "watch", other.id]).exit_code == 1


def test_batch_txt_and_jsonl_resumable(app: typer.Typer, native: FakeNative, tmp_path: Path) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("# a comment\na red circle\n\na blue square\nplease fail\n")
    out = tmp_path / "out"
    result = runner.invoke(app, ["batch", str(prompts), "-o", str(out), "--concurrency", "2", "--seed", "5"])
    assert result.exit_code == 1  # one item failed
    assert "2 done, 0 skipped" in result.stdout and "1 failed" in result.stdout
    assert "item 2 ('please fail'): JobFailedError" in result.stderr
    assert len(list(out.glob("*.png"))) == 2
    again = runner.invoke(app, ["batch", str(prompts), "-o", str(out), "--seed", "5", "--json"])
    rows = json.loads(again.stdout)
    assert [r["skipped"] for r in rows] == [True, True, False]
    jsonl = tmp_path / "p.jsonl"
    jsonl.write_text('{"prompt": "x", "seed": 9, "n": 2}\n{"prompt": "y"}\n')
    result = runner.invoke(app, ["batch", str(jsonl), "-o", str(tmp_path / "j")])
    assert result.exit_code == 0, result.output
    assert len(list((tmp_path / "j").glob("*.png"))) == 3
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"nope": 1}\n')
    result = runner.invoke(app, ["batch", str(bad), "-o", str(tmp_path / "b")])
    assert result.exit_code == 2 and "prompt" in result.stderr


def test_info_reads_the_infotext(app: typer.Typer, tmp_path: Path) -> None:
    image = tmp_path / "a.png"
    text = (
        "a red circle\nNegative prompt: blue\n"
        "Steps: 20, Sampler: Euler a, CFG scale: 7, Seed: 42, Size: 512x512"
    )
    image.write_bytes(png_bytes(infotext=text))
    result = runner.invoke(app, ["info", str(image)])
    assert result.exit_code == 0 and result.stdout.strip() == text
    data = json.loads(runner.invoke(app, ["info", str(image), "--json"]).stdout)
    assert data["parameters"]["Seed"] == "42" and data["parameters"]["Prompt"] == "a red circle"
    bare = tmp_path / "b.png"
    bare.write_bytes(png_bytes())
    result = runner.invoke(app, ["info", str(bare)])
    assert result.exit_code == 1 and result.stderr.startswith("NoInfotext:")
    junk = tmp_path / "c.png"
    junk.write_bytes(b"not an image")
    assert runner.invoke(app, ["info", str(junk)]).exit_code == 1
    assert runner.invoke(app, ["info", str(tmp_path / "missing.png")]).exit_code == 2


def test_real_entry_point_against_a_live_server(tmp_path: Path, live_server: ThreadedServer) -> None:
    """`sdgate generate` / `info` / `jobs` as mounted on the real app, over HTTP to the real server."""
    from sdgate.cli.main import app as sdgate_app

    out = tmp_path / "out"
    result = runner.invoke(
        sdgate_app,
        [
            "generate",
            "a red circle",
            "--size",
            "64x64",
            "--steps",
            "2",
            "--seed",
            "11",
            "-o",
            str(out),
            "--backend",
            live_server.url,
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["seeds"] == [11] and data["job_id"].startswith("job_")
    info = runner.invoke(sdgate_app, ["info", data["images"][0]])
    assert info.exit_code == 0 and info.stdout.startswith("a red circle\nSteps: 2")
    shown = runner.invoke(sdgate_app, ["jobs", "show", data["job_id"], "--backend", live_server.url])
    assert shown.exit_code == 0 and "succeeded" in shown.stdout
