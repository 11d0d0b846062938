"""No job is ever claimed twice: not by threads sharing a store, not by processes sharing a file."""

from __future__ import annotations

import multiprocessing
import threading
import time
from collections import Counter
from typing import Any

from sdgate.core.requests import GenerationRequest
from sdgate.jobs.store import SqlJobStore

JOBS = 200


def _fill(store: SqlJobStore) -> set[str]:
    return {store.submit(GenerationRequest(prompt=f"p{i}"), priority=i % 3).id for i in range(JOBS)}


def _claim_until_empty(store: SqlJobStore, worker_id: str) -> list[str]:
    claimed = []
    while (job := store.claim_next(worker_id)) is not None:
        claimed.append(job.id)
        # A moment of "work": SQLite's busy handler is not fair, and without a pause one claimer
        # can take every job before the others get the lock (correct, but then nothing competed).
        time.sleep(0.001)
    return claimed


def test_eight_threads_never_claim_the_same_job(store: SqlJobStore) -> None:
    submitted = _fill(store)
    start = threading.Barrier(8)
    claims: dict[str, list[str]] = {}

    def work(name: str) -> None:
        start.wait()
        claims[name] = _claim_until_empty(store, name)

    threads = [threading.Thread(target=work, args=(f"t{i}",)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)

    every = [job_id for ids in claims.values() for job_id in ids]
    assert len(claims) == 8
    assert Counter(every).most_common(1)[0][1] == 1
    assert set(every) == submitted
    assert sum(1 for ids in claims.values() if ids) > 1  # they really competed


def _claim_in_process(db_url: str, name: str, start: Any, out: Any) -> None:
    with SqlJobStore(db_url) as store:
        start.wait()
        out.put((name, _claim_until_empty(store, name)))


def test_two_processes_never_claim_the_same_job(store: SqlJobStore, db_url: str) -> None:
    submitted = _fill(store)
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Barrier(2)
    out = ctx.Queue()
    procs = [ctx.Process(target=_claim_in_process, args=(db_url, f"p{i}", start, out)) for i in range(2)]
    for p in procs:
        p.start()
    results = dict(out.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0

    every = results["p0"] + results["p1"]
    assert Counter(every).most_common(1)[0][1] == 1
    assert set(every) == submitted
    assert results["p0"] and results["p1"]
