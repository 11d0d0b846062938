"""The newer ``sdgate generate`` flags and ``sdgate jobs retry|delete|events``."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import typer
from typer.testing import CliRunner

from sdgate.client import Client
from tests.sdk.conftest import ThreadedServer
from tests.sdk.fakes import FakeNative

runner = CliRunner()


def test_generate_flags_reach_the_request(app: typer.Typer, native: FakeNative, tmp_path: Path) -> None:
    args = [
        "generate",
        "a cat",
        "--batch",
        "2",
        "--n-iter",
        "3",
        "--sampler",
        "Euler a",
        "--scheduler",
        "karras",
    ]
    args += ["--cfg", "5.5", "--negative", "blurry", "--subseed", "4", "--subseed-strength", "0.2"]
    args += ["--hires", "2.0", "--hires-steps", "5", "--hires-strength", "0.5", "--hires-upscaler", "Lanczos"]
    args += ["--lora", "detail:0.7", "--lora", "style", "--vae", "kl.safetensors", "--style", "cinematic"]
    args += ["--clip-skip", "2", "--tiling", "-o", str(tmp_path), "--json"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    body = json.loads(native.requests[0].content)
    assert (body["batch_size"], body["n_iter"], body["sampler"], body["scheduler"]) == (
        2,
        3,
        "Euler a",
        "karras",
    )
    assert (body["cfg_scale"], body["negative_prompt"], body["subseed"], body["subseed_strength"]) == (
        5.5,
        "blurry",
        4,
        0.2,
    )
    hires = body["hires"]
    assert (hires["scale"], hires["second_pass_steps"], hires["denoising_strength"], hires["upscaler"]) == (
        2.0,
        5,
        0.5,
        "Lanczos",
    )
    assert [(x["name"], x["te_weight"]) for x in body["loras"]] == [("detail", 0.7), ("style", 1.0)]
    assert (body["vae"], body["styles"], body["clip_skip"], body["tiling"]) == (
        "kl.safetensors",
        ["cinematic"],
        2,
        True,
    )


def test_hires_companions_need_hires(app: typer.Typer, native: FakeNative) -> None:
    result = runner.invoke(app, ["generate", "x", "--hires-steps", "5"])
    assert result.exit_code == 2 and "need --hires SCALE" in result.stderr
    assert native.requests == []


def test_jobs_retry_and_delete(app: typer.Typer, native: FakeNative) -> None:
    client = Client("http://sdgate.test", transport=native.transport)
    job = client.jobs.submit("a red circle", seed=3)
    client.jobs.wait(job.id)
    retried = runner.invoke(app, ["jobs", "retry", job.id, "--json"])
    assert retried.exit_code == 0, retried.output
    assert json.loads(retried.stdout)["id"] == "job_0002"
    deleted = runner.invoke(app, ["jobs", "delete", job.id])
    assert deleted.exit_code == 0 and deleted.stdout.strip() == f"{job.id} deleted"
    missing = runner.invoke(app, ["jobs", "delete", job.id])
    assert missing.exit_code == 1 and missing.stderr.startswith("NotFoundError")


def test_jobs_events_against_a_live_server(app: typer.Typer, live_server: ThreadedServer) -> None:
    client = Client(live_server.url)
    stop = threading.Event()

    def keep_submitting() -> None:  # the stream only speaks when something happens
        while not stop.wait(0.1):
            client.jobs.submit("a red circle", width=64, height=64, steps=1)

    feeder = threading.Thread(target=keep_submitting, daemon=True)
    feeder.start()
    try:
        result = runner.invoke(
            app, ["jobs", "events", "--count", "3", "--json", "--backend", live_server.url]
        )
    finally:
        stop.set()
        feeder.join(10)
        client.close()
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(lines) == 3 and all(line["job_id"].startswith("job_") for line in lines)
    assert {line["event"] for line in lines} <= {"queued", "started", "progress", "succeeded"}
