"""``sdgate status``: workers and queue from a live server, as a table and as JSON."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from pathlib import Path

import typer
from typer.testing import CliRunner

from sdgate.core.jobs import WorkerInfo
from sdgate.jobs.store import SqlJobStore
from sdgate.settings import Settings
from tests.sdk.conftest import ThreadedServer


def _status(app: typer.Typer, url: str, *args: str) -> str:
    result = CliRunner().invoke(app, ["status", "--backend", url, *args])
    assert result.exit_code == 0, result.output
    return result.output


def test_status_lists_workers_and_the_queue(
    app: typer.Typer, live_server: ThreadedServer, tmp_path: Path
) -> None:
    database = Settings(data_dir=tmp_path / "data").database_url  # the live server's (conftest)
    with SqlJobStore(database) as store:
        store.register_worker(WorkerInfo(id="gpu-7", host="node-b", pid=7, device="cuda:0",
                                         engine="diffusers", models=("sdxl-base",),
                                         free_memory_bytes=12 * 2**30, current_job_id="job_x",
                                         started_at=datetime.now(UTC)))
    deadline = time.monotonic() + 5
    while True:
        data = json.loads(_status(app, live_server.url, "--json"))
        if len(data["workers"]) == 2 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert {w["id"] for w in data["workers"]} >= {"gpu-7"} and len(data["workers"]) == 2
    assert data["queue"]["queued"] == 0

    table = _status(app, live_server.url)
    assert "2 worker(s)" in table
    for text in ("gpu-7", "node-b", "cuda:0", "sdxl-base", "12.0 GiB", "job_x", "queue: queued 0"):
        assert text in table, text


def test_status_of_a_server_that_does_not_answer_is_one_error(app: typer.Typer) -> None:
    result = CliRunner().invoke(app, ["status", "--backend", "http://127.0.0.1:9"])
    assert result.exit_code == 1
