"""No job is ever claimed twice: not by threads sharing a store, not by processes sharing a database;
and the other read-then-writes (lease sweeps, cancels, outbox appends) hold under concurrency too."""

from __future__ import annotations

import multiprocessing
import threading
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa

from sdgate.core.jobs import ControlAction, JobState
from sdgate.core.requests import GenerationRequest
from sdgate.jobs.outbox import Cursor, read_after
from sdgate.jobs.schema import job_events
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


def _stores(db_url: str, n: int) -> list[SqlJobStore]:
    return [SqlJobStore(db_url) for _ in range(n)]


def _together(n: int, work: Any) -> None:
    """``work(i)`` in ``n`` threads started at once; re-raises the first failure."""
    start = threading.Barrier(n)
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            start.wait()
            work(i)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert errors == []


def test_concurrent_lease_sweeps_requeue_each_expired_job_once(store: SqlJobStore, db_url: str) -> None:
    ids = [store.submit(GenerationRequest(prompt=f"p{i}")).id for i in range(60)]
    for i in range(60):
        assert store.claim_next(f"dead{i}") is not None
    later = datetime.now(UTC) + timedelta(hours=1)
    sweepers = _stores(db_url, 4)
    requeued: list[list[str]] = [[] for _ in sweepers]
    try:
        _together(4, lambda i: requeued[i].extend(sweepers[i].requeue_expired(max_attempts=5, now=later)))
    finally:
        for s in sweepers:
            s.close()
    every = [job_id for ids_ in requeued for job_id in ids_]
    assert sorted(every) == sorted(ids)  # each once, by exactly one sweeper
    with store.database.connect() as conn:
        queued_events = conn.execute(
            sa.select(job_events.c.job_id).where(job_events.c.kind == "queued")
        ).scalars().all()
    assert Counter(queued_events) == Counter({job_id: 2 for job_id in ids})  # submitted, re-queued


def test_a_cancel_racing_a_claim_never_cancels_a_claimed_job(store: SqlJobStore, db_url: str) -> None:
    ids = [store.submit(GenerationRequest(prompt=f"p{i}")).id for i in range(80)]
    claimed: list[str] = []
    canceller = SqlJobStore(db_url)

    def work(i: int) -> None:
        if i == 0:
            claimed.extend(_claim_until_empty(store, "w"))
        else:
            for job_id in ids:
                canceller.request_control(job_id, ControlAction.CANCEL)

    try:
        _together(2, work)
    finally:
        canceller.close()
    for job_id in ids:
        job = store.get(job_id)
        if job_id in claimed:  # the worker holds it: the cancel is a request for the worker
            assert job.state is JobState.RUNNING and job.control is ControlAction.CANCEL, job_id
        else:
            assert job.state is JobState.CANCELLED and job.started_at is None, job_id


def test_outbox_readers_resuming_after_a_seq_miss_nothing(store: SqlJobStore, db_url: str) -> None:
    """"Every row after my cursor" (``outbox.read_after``: ``seq`` on SQLite, ``(tx, seq)`` behind
    the transaction-id fence on PostgreSQL) is complete while eight writers append at once with no
    lock between them: a row that commits late never lands behind a reader's cursor."""
    writers = _stores(db_url, 8)
    seen: list[int] = []
    done = threading.Event()

    def read_new(cursor: Cursor) -> Cursor:
        with store.database.connect() as conn:
            batch = read_after(conn, cursor, limit=10_000)
        seen.extend(row.seq for row in batch.rows)
        return batch.cursor

    def follow() -> None:
        cursor: Cursor = (0, 0)
        while not done.is_set():
            cursor = read_new(cursor)
        for _ in range(100):  # the writers are done: the fence passes every row soon
            cursor = read_new(cursor)
            if len(seen) >= 8 * 40:
                break
            time.sleep(0.05)

    follower = threading.Thread(target=follow)
    follower.start()
    try:
        _together(8, lambda i: [writers[i].submit(GenerationRequest(prompt=f"{i}-{n}")) for n in range(40)])
    finally:
        done.set()
        follower.join(timeout=60)
        for w in writers:
            w.close()
    with store.database.connect() as conn:
        every = conn.execute(sa.select(job_events.c.seq).order_by(job_events.c.seq)).scalars().all()
    assert len(every) == 8 * 40
    assert sorted(seen) == every  # each row once: none skipped, none read twice
