"""A real ``kill -9`` of a process in the middle of a job: nothing is lost, nothing runs twice
to completion, and the killed job is retried by the next process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from sdgate.core.jobs import JobState
from sdgate.core.requests import GenerationRequest
from sdgate.jobs.images import LocalImageStore
from sdgate.jobs.store import SqlJobStore
from sdgate.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


def _spawn(data_dir: Path, marks: Path, mode: str, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "tests.worker.crash_child", str(data_dir), str(marks), mode],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def _marks(marks: Path, kind: str) -> Counter[str]:
    return Counter(p.name.split("-")[1] for p in marks.iterdir() if p.name.startswith(f"{kind}-"))


@pytest.mark.slow  # two interpreters start: about 3 s
@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs POSIX signals")
def test_kill_9_mid_job_then_restart_runs_every_job_exactly_once(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data")
    marks = tmp_path / "marks"
    marks.mkdir()
    prompts = ["p0", "p1", "p2", "p3"]
    with SqlJobStore(settings.database_url) as store:
        jobs = [store.submit(GenerationRequest(prompt=p)) for p in prompts]
        victim = jobs[1].id

        # 1. A first process runs p0, and is killed half-way through p1.
        first = _spawn(settings.data_dir, marks, "serve", tmp_path / "first.log")
        try:
            deadline = time.monotonic() + 60
            while True:
                job = store.get(victim)
                if job.state is JobState.RUNNING and job.progress and 1 <= job.progress.step <= 5:
                    break
                assert first.poll() is None, (tmp_path / "first.log").read_text()
                assert time.monotonic() < deadline, "the first process never reached the victim job"
                time.sleep(0.005)
            os.kill(first.pid, signal.SIGKILL)
        finally:
            first.kill()
            first.wait(10)
        assert first.returncode == -signal.SIGKILL

        states = [store.get(j.id).state for j in jobs]
        assert states == [JobState.SUCCEEDED, JobState.RUNNING, JobState.QUEUED, JobState.QUEUED]

        # 2. A new process recovers the stranded job and drains the queue.
        second = _spawn(settings.data_dir, marks, "drain", tmp_path / "second.log")
        assert second.wait(60) == 0, (tmp_path / "second.log").read_text()

        final = [store.get(j.id) for j in jobs]

    assert [j.state for j in final] == [JobState.SUCCEEDED] * 4
    assert [j.attempts for j in final] == [1, 2, 1, 1]
    assert _marks(marks, "done") == Counter(prompts)  # each job completed exactly once
    assert _marks(marks, "start") == Counter(prompts + ["p1"])  # and only p1 was started twice
    images = LocalImageStore(settings.images_dir)
    for job in final:
        assert job.result is not None and len(job.result.images) == 1
        assert images.exists(job.result.images[0].id)
