"""``benchmarks/queue.py`` runs end to end: every set-up's jobs succeed and its table prints (its
figures are not judged here: the machines that run tests are too noisy for a timed test)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.jobs.conftest import PgServer

pytestmark = pytest.mark.cluster

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "queue.py"


def test_the_queue_benchmark_runs_every_set_up(pg_server: PgServer) -> None:
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--jobs", "60", "--latency-jobs", "3", "--configs", "sqlite,pg1,pg4",
         "--database-url", pg_server.url.render_as_string(hide_password=False)],
        capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    table = done.stdout
    assert "SQLite embedded, 1 worker" in table and "PostgreSQL, 4 workers" in table
    throughput = re.search(r"throughput, jobs/s\s+(\d+)\s+(\d+)\s+(\d+)", table)
    assert throughput is not None and all(int(v) > 0 for v in throughput.groups())
    assert re.search(r"jobs not succeeded\s+0\s+0\s+0\s*$", table, re.MULTILINE), table


CPU_SCRIPT = SCRIPT.with_name("queue_cpu.py")


def test_the_cpu_per_job_script_prints_its_figures(pg_server: PgServer) -> None:
    done = subprocess.run(
        [sys.executable, str(CPU_SCRIPT), "--configs", "pg1", "--small", "20", "--large", "80",
         "--repeat", "1", "--database-url", pg_server.url.render_as_string(hide_password=False)],
        capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    found = re.search(r"benchmark processes ([\d.]+) ms/job, PostgreSQL (-?[\d.]+) ms/job", done.stdout)
    assert found is not None, done.stdout
    assert 0 < float(found.group(1)) < 1000  # 60 jobs' worth of CPU, per job


def test_the_floor_script_runs_its_jobs(pg_server: PgServer) -> None:
    done = subprocess.run(
        [sys.executable, str(SCRIPT.with_name("queue_floor.py")), "--jobs", "60", "--workers", "2",
         "--database-url", pg_server.url.render_as_string(hide_password=False)],
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    found = re.search(r"60 jobs, 2 worker processes: (\d+) jobs/s", done.stdout)
    assert found is not None and int(found.group(1)) > 0, done.stdout
