"""``sdgate audit``: the audit log read from the server's database (``--data-dir`` or
``--database``, SQLite and PostgreSQL), filtered by key (id, name, prefix, Basic user) and time,
as a table or ``--json``; also while a server runs and records calls."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from sdgate.cli.main import app
from sdgate.jobs.audit import AuditLog, AuditRecord
from sdgate.jobs.database import create_db_engine, ensure_schema
from sdgate.jobs.keys import KeyStore
from sdgate.settings import Settings
from tests.fakes import FakeEngine, write_fake_checkpoint
from tests.harness import serve
from tests.jobs.conftest import db_url, pg_server  # noqa: F401 - fixtures: SQLite and PostgreSQL

runner = CliRunner()
# When ``filled`` wrote its records (set by it): "--since 1h" and "--until 5m" are read against the
# wall clock, so the records are timed from the test's own start, not from when this module loaded.
NOW = datetime.now(UTC).replace(microsecond=0)


@pytest.fixture
def filled(db_url: str) -> Iterator[tuple[str, str, str]]:  # noqa: F811
    """A database with one API key (app1) and five records: the key's three (2 h, 30 min and 1 min
    ago), a Basic user's and a refusal; yields (url, the key's id, its prefix)."""
    global NOW
    NOW = datetime.now(UTC).replace(microsecond=0)
    engine = create_db_engine(db_url)
    try:
        ensure_schema(engine)
        made = KeyStore(engine).create("app1", scopes=("generate", "read"))
        key = made.key
        with AuditLog(engine) as log:
            for ago, route, status in ((7200, "/sdapi/v1/txt2img", 200), (1800, "/v1/models", 200),
                                       (60, "/v1/images/generations", 429)):
                log.record(AuditRecord(at=NOW - timedelta(seconds=ago), method="POST", route=route,
                                       status=status, key_id=key.id, principal=key.id, dialect="a1111",
                                       job_id="job_1" if status == 200 else None, images=2, gpu_seconds=1.25))
            log.record(AuditRecord(at=NOW - timedelta(seconds=30), method="GET", route="/sdapi/v1/options",
                                   status=200, principal="alice", dialect="a1111"))
            log.record(AuditRecord(at=NOW - timedelta(seconds=10), method="GET", route="/v1/models",
                                   status=401, dialect="openai"))
        yield db_url, key.id, key.prefix
    finally:
        engine.dispose()


def audit_json(*args: str) -> list[dict[str, object]]:
    result = runner.invoke(app, ["audit", *args, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_filters_by_key_id_name_prefix_and_user(filled: tuple[str, str, str]) -> None:
    url, key_id, prefix = filled
    by_id = audit_json("--database", url, "--key", key_id)
    assert [r["route"] for r in by_id] == ["/v1/images/generations", "/v1/models", "/sdapi/v1/txt2img"]
    assert by_id[1]["key_id"] == key_id and by_id[1]["images"] == 2 and by_id[1]["gpu_seconds"] == 1.25
    assert audit_json("--database", url, "--key", "app1") == by_id
    assert audit_json("--database", url, "--key", prefix) == by_id
    assert [r["route"] for r in audit_json("--database", url, "--key", "alice")] == ["/sdapi/v1/options"]
    assert audit_json("--database", url, "--key", "nobody") == []
    assert len(audit_json("--database", url)) == 5


def test_since_until_status_and_limit(filled: tuple[str, str, str]) -> None:
    url, key_id, _ = filled
    assert [r["status"] for r in audit_json("--database", url, "--since", "1h")] == [401, 200, 429, 200]
    assert [r["route"] for r in audit_json("--database", url, "--key", key_id, "--since", "1h",
                                           "--until", "5m")] == ["/v1/models"]
    day = (NOW - timedelta(days=1)).strftime("%Y-%m-%d")
    assert len(audit_json("--database", url, "--since", day)) == 5
    assert audit_json("--database", url, "--until", day) == []
    iso = (NOW - timedelta(seconds=45)).isoformat()
    assert [r["status"] for r in audit_json("--database", url, "--since", iso)] == [401, 200]
    assert [r["status"] for r in audit_json("--database", url, "--status", "429")] == [429]
    assert len(audit_json("--database", url, "--limit", "2")) == 2


def test_table_output(filled: tuple[str, str, str]) -> None:
    url, key_id, _ = filled
    result = runner.invoke(app, ["audit", "--database", url, "--key", "app1"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 3
    assert key_id in lines[0] and "/v1/images/generations" in lines[0] and " 429 " in lines[0]
    assert "job_1" in lines[1] and "1.25s" in lines[1]
    none = runner.invoke(app, ["audit", "--database", url, "--key", "nobody"])
    assert none.exit_code == 0 and none.stdout.strip() == "no audit records"


def test_usage_errors_exit_2(tmp_path: Path) -> None:
    bad = runner.invoke(app, ["audit", "--data-dir", str(tmp_path), "--since", "yesterday"])
    assert bad.exit_code == 2 and "UsageError" in bad.stderr and "--since" in bad.stderr
    url = runner.invoke(app, ["audit", "--database", "mysql://x/y"])
    assert url.exit_code == 2 and "UsageError" in url.stderr


def test_reads_what_a_running_server_records(tmp_path: Path) -> None:
    write_fake_checkpoint(tmp_path / "models" / "Stable-diffusion" / "alpha.safetensors")
    data = tmp_path / "data"
    settings = Settings(data_dir=data, models_dir=tmp_path / "models", device="cpu", worker_poll_s=0.02,
                        api_auth="alice:pw")
    with serve(settings, FakeEngine()) as url:
        assert httpx.get(url + "/sdapi/v1/options", auth=("alice", "pw")).status_code == 200
        assert httpx.get(url + "/sdapi/v1/options").status_code == 401
        deadline = time.monotonic() + 10
        while True:  # the server's writer inserts within moments
            records = audit_json("--data-dir", str(data))
            if len(records) == 2 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
    assert [(r["principal"], r["route"], r["status"]) for r in records] == [
        (None, "/sdapi/v1/options", 401), ("alice", "/sdapi/v1/options", 200)]
