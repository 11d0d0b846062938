"""Every ``$ sdgate ...`` line of the README's CLI block runs against a live server (FakeEngine)."""

from __future__ import annotations

import re
import shlex
import subprocess
import threading
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sdgate.client import Client
from tests.sdk.conftest import ThreadedServer

README = Path(__file__).resolve().parents[2] / "README.md"
runner = CliRunner()


def cli_lines() -> list[str]:
    (block,) = re.findall(r"```console\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)
    return [line[2:].split("  #")[0].strip() for line in block.splitlines() if line.startswith("$ ")]


def test_the_block_covers_the_new_commands() -> None:
    text = " ".join(cli_lines())
    for piece in ("--hires", "--init", "--n-iter", "batch", "jobs retry", "jobs delete", "jobs events"):
        assert piece in text


@pytest.mark.slow
def test_readme_cli_lines_run(
    live_server: ThreadedServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sdgate.cli.main import app

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SDGATE_BASE_URL", live_server.url)
    job_id = ""
    for line in cli_lines():
        line = line.replace("JOB_ID", job_id)
        if not line.startswith("sdgate "):  # the block's own shell lines (cp, printf) make its files
            subprocess.run(["bash", "-c", line], cwd=tmp_path, check=True)
            continue
        argv = shlex.split(line)[1:]
        feeder = None
        if argv[:2] == ["jobs", "events"]:  # the stream speaks only when something happens
            feeder = Feeder(live_server.url)
        try:
            result = runner.invoke(app, argv)
        finally:
            if feeder is not None:
                feeder.stop()
        assert result.exit_code == 0, f"{line}\n{result.output}"
        if not job_id:
            job_id = re.search(r"(job_\w+)-0\.png", result.stdout).group(1)  # type: ignore[union-attr]


class Feeder:
    def __init__(self, url: str) -> None:
        self.client = Client(url)
        self.done = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self) -> None:
        while not self.done.wait(0.1):
            self.client.jobs.submit("a red circle", width=64, height=64, steps=1)

    def stop(self) -> None:
        self.done.set()
        self.thread.join(10)
        self.client.close()
