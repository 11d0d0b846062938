"""Submitting and finishing many jobs in one transaction (SQLite and PostgreSQL): ``submit_many``
queues jobs exactly as ``submit`` one after the other would (FIFO, fair turns, limits, one
``queued`` event each), all or none; ``finish_many`` records each outcome as ``succeed`` /
``fail`` / ``cancelled`` would (terminal once, preview dropped, run charged, one event each), one
job's refusal its own."""

from __future__ import annotations

import threading

import pytest
import sqlalchemy as sa

from sdgate.core.errors import Conflict, NotFound, QueueFull, TooManyJobs
from sdgate.core.jobs import ControlAction, Job, JobEventKind, JobState, Progress
from sdgate.core.requests import GenerationRequest
from sdgate.core.results import GenerationResult
from sdgate.jobs.database import transaction
from sdgate.jobs.events import JobEvents
from sdgate.jobs.outbox import OutboxEvent, OutboxFollower
from sdgate.jobs.schema import daily_usage, job_events
from sdgate.jobs.store import Outcome, SqlJobStore


def _requests(n: int, model: str | None = None) -> list[GenerationRequest]:
    return [GenerationRequest(prompt=f"p{i}", seed=i, model=model) for i in range(n)]


def _claim_all(store: SqlJobStore, worker: str = "w") -> list[str]:
    claimed: list[str] = []
    while job := store.claim_next(worker):
        claimed.append(job.id)
    return claimed


def test_submit_many_queues_in_order_with_one_event_each(
    store: SqlJobStore, published: list[tuple[JobEventKind, Job]]
) -> None:
    jobs = store.submit_many(_requests(5), dialect="a1111", owner="key-a", priority=2, metadata={"k": "v"})
    assert [j.request.prompt for j in jobs] == [f"p{i}" for i in range(5)]
    assert all(j.state is JobState.QUEUED and j.owner == "key-a" and j.priority == 2 and j.dialect == "a1111"
               and j.metadata == {"k": "v"} for j in jobs)
    assert [store.get(j.id) for j in jobs] == jobs
    assert [(kind, job.id) for kind, job in published] == [(JobEventKind.QUEUED, j.id) for j in jobs]
    with transaction(store.database, write=False) as conn:
        query = sa.select(job_events.c.job_id, job_events.c.kind).order_by(job_events.c.seq)
        rows = conn.execute(query).all()
    assert [tuple(r) for r in rows] == [(j.id, "queued") for j in jobs]
    assert [store.position(j.id) for j in jobs] == [0, 1, 2, 3, 4]
    assert _claim_all(store) == [j.id for j in jobs]  # FIFO
    assert store.submit_many([]) == []


def test_submit_many_takes_the_turns_single_submits_would(store: SqlJobStore) -> None:
    a = store.submit_many(_requests(4), owner="key-a")
    b = store.submit(GenerationRequest(prompt="b"), owner="key-b")
    anonymous = store.submit_many(_requests(2))
    a2 = store.submit_many(_requests(1), owner="key-a")  # after key-a's last queued turn
    # Round-robin: one of each owner per turn, FIFO within a turn.
    assert _claim_all(store) == [a[0].id, b.id, anonymous[0].id, a[1].id, anonymous[1].id, a[2].id,
                                 a[3].id, a2[0].id]


def test_submit_many_is_all_or_none_under_the_limits(db_url: str) -> None:
    with SqlJobStore(db_url, max_queue=5) as store:
        store.submit_many(_requests(3))
        with pytest.raises(QueueFull):
            store.submit_many(_requests(3))
        assert store.queue_depth() == 3
        assert len(store.submit_many(_requests(2))) == 2
        store.claim_next("w")
        with pytest.raises(TooManyJobs):  # 4 queued + 1 running, one more would be 6 > 4
            store.submit_many(_requests(1), owner=None, max_owner_jobs=4)
        assert store.queue_depth() == 4


def test_concurrent_submit_many_and_claims_take_each_job_once(db_url: str) -> None:
    with SqlJobStore(db_url) as store:
        submitted: list[str] = []
        claimed: list[str] = []
        lock = threading.Lock()

        def submit(owner: str) -> None:
            for _ in range(5):
                ids = [j.id for j in store.submit_many(_requests(8), owner=owner)]
                with lock:
                    submitted.extend(ids)

        def claim(worker: str) -> None:
            idle = 0
            while idle < 50:
                batch = store.claim_group(worker, limit=4)
                idle = 0 if batch else idle + 1
                with lock:
                    claimed.extend(j.id for j in batch)

        threads = [threading.Thread(target=submit, args=(f"key-{i}",)) for i in range(3)]
        threads += [threading.Thread(target=claim, args=(f"w{i}",)) for i in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        claimed += _claim_all(store)
        assert len(submitted) == 120
        assert sorted(claimed) == sorted(submitted)


def test_finish_many_records_each_outcome_once(
    store: SqlJobStore, published: list[tuple[JobEventKind, Job]]
) -> None:
    ids = [j.id for j in store.submit_many(_requests(4), owner="key-a")]
    assert [j.id for j in store.claim_group("w", limit=4)] == ids
    store.put_preview(ids[0], b"png", iteration=0, step=1)
    published.clear()
    result = GenerationResult(model_name="m", steps=3)
    answers = store.finish_many([
        Outcome(ids[0], JobState.SUCCEEDED, result=result),
        Outcome(ids[1], JobState.FAILED, error={"code": "boom", "message": "it broke"}),
        Outcome(ids[2], JobState.CANCELLED),
        Outcome(ids[3], JobState.SUCCEEDED, result=result),
    ], worker_id="w")
    assert all(isinstance(a, Job) for a in answers)
    states = [store.get(i).state for i in ids]
    assert states == [JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED, JobState.SUCCEEDED]
    first = store.get(ids[0])
    assert first.result == result and first.finished_at is not None
    assert store.get(ids[1]).error == {"code": "boom", "message": "it broke"}
    assert store.get(ids[2]).result is None
    assert store.preview(ids[0]) is None
    assert [(kind, job.id) for kind, job in published] == [
        (JobEventKind.SUCCEEDED, ids[0]), (JobEventKind.FAILED, ids[1]),
        (JobEventKind.CANCELLED, ids[2]), (JobEventKind.SUCCEEDED, ids[3]),
    ]
    with transaction(store.database, write=False) as conn:
        usage = conn.execute(sa.select(daily_usage.c.principal)).scalars().all()
        kinds = conn.execute(sa.select(job_events.c.kind).where(job_events.c.job_id.in_(ids))
                             .order_by(job_events.c.seq)).scalars().all()
    assert usage == ["key-a"]  # four runs on one row of the day
    assert kinds[-4:] == ["succeeded", "failed", "cancelled", "succeeded"]
    # A second outcome is refused, as the single calls refuse it, and changes nothing.
    again = store.finish_many([Outcome(ids[0], JobState.FAILED, error={"code": "x", "message": "y"})],
                              worker_id="w")
    assert isinstance(again[0], Conflict) and store.get(ids[0]).state is JobState.SUCCEEDED


def test_finish_many_refuses_only_the_jobs_the_worker_does_not_hold(store: SqlJobStore) -> None:
    mine, theirs, queued = (j.id for j in store.submit_many(_requests(3)))
    assert store.claim_next("w") is not None and store.claim_next("other") is not None
    answers = store.finish_many([
        Outcome(theirs, JobState.SUCCEEDED, result=GenerationResult()),
        Outcome(mine, JobState.SUCCEEDED, result=GenerationResult()),
        Outcome(queued, JobState.FAILED, error={"code": "x", "message": "y"}),
        Outcome("job_missing", JobState.SUCCEEDED, result=GenerationResult()),
    ], worker_id="w")
    assert isinstance(answers[0], Conflict) and "no longer held by w" in answers[0].message
    assert isinstance(answers[1], Job) and answers[1].state is JobState.SUCCEEDED
    assert isinstance(answers[2], Conflict) and "queued" in answers[2].message
    assert isinstance(answers[3], NotFound)
    assert store.get(theirs).state is JobState.RUNNING and store.get(queued).state is JobState.QUEUED
    with pytest.raises(ValueError):
        store.finish_many([Outcome(mine, JobState.RUNNING)], worker_id="w")
    assert store.finish_many([], worker_id="w") == []


def test_finish_many_with_the_held_jobs_answers_what_a_read_finds(
    store: SqlJobStore, published: list[tuple[JobEventKind, Job]]
) -> None:
    """An outcome that carries its worker's copy of the job (``held``) is not read back on
    PostgreSQL: the answer, the event published and the outbox's document must still be exactly the
    row's, including what changed since the claim (a cancel requested) and the last step given."""
    ids = [j.id for j in store.submit_many(_requests(3), owner="key-a", metadata={"k": "v"})]
    held = store.claim_group("w", limit=3)
    store.request_control(ids[1], ControlAction.CANCEL)
    store.update_progress(ids[2], Progress(step=1, steps=3))  # written as it ran; its end gives none
    progress = Progress(step=3, steps=3, eta_s=0.0)
    result = GenerationResult(model_name="m", steps=3, timings={"generate_s": 0.25})
    published.clear()
    answers = store.finish_many([
        Outcome(ids[0], JobState.SUCCEEDED, result=result, progress=progress, held=held[0]),
        Outcome(ids[1], JobState.CANCELLED, progress=progress, held=held[1]),
        Outcome(ids[2], JobState.FAILED, error={"code": "boom", "message": "it broke"}, held=held[2]),
    ], worker_id="w")
    read = [store.get(i) for i in ids]
    assert answers == read
    assert [job for _, job in published] == read
    assert read[0].progress == progress and read[0].result == result and read[0].metadata == {"k": "v"}
    assert read[1].control is ControlAction.CANCEL and read[1].result is None
    assert read[2].progress == Progress(step=1, steps=3)
    assert read[2].error == {"code": "boom", "message": "it broke"}
    with transaction(store.database, write=False) as conn:
        documents = conn.execute(sa.select(job_events.c.job).where(job_events.c.job_id.in_(ids))
                                 .order_by(job_events.c.seq)).scalars().all()
    assert [Job.model_validate(d) for d in documents[-3:]] == read


def test_another_node_hears_every_bulk_event(db_url: str) -> None:
    """The outbox rows of a bulk submit and finish reach another process's follower, each once."""
    with SqlJobStore(db_url) as node_a, SqlJobStore(db_url, events=JobEvents()) as node_b:
        heard: list[tuple[JobEventKind, str]] = []
        done = threading.Event()
        follower = OutboxFollower(node_b.database, origin=node_b.origin, poll_s=0.05)

        def listen(event: OutboxEvent) -> None:
            heard.append((event.kind, event.job.id))
            if len(heard) == 9:
                done.set()

        follower.add_listener(listen)
        follower.start()
        try:
            ids = [j.id for j in node_a.submit_many(_requests(3))]
            node_a.claim_group("w", limit=3)
            node_a.finish_many([Outcome(i, JobState.SUCCEEDED, result=GenerationResult()) for i in ids],
                               worker_id="w")
            assert done.wait(10)
        finally:
            follower.stop()
        assert sorted(heard, key=lambda e: (ids.index(e[1]), e[0].value)) == sorted(
            [(kind, i) for i in ids for kind in (JobEventKind.QUEUED, JobEventKind.STARTED,
                                                  JobEventKind.SUCCEEDED)],
            key=lambda e: (ids.index(e[1]), e[0].value))


def _outboxed(store: SqlJobStore, job_id: str) -> list[tuple[str, Job]]:
    with transaction(store.database, write=False) as conn:
        rows = conn.execute(sa.select(job_events.c.kind, job_events.c.job)
                            .where(job_events.c.job_id == job_id).order_by(job_events.c.seq)).all()
    return [(kind, Job.model_validate(job)) for kind, job in rows]


@pytest.mark.parametrize("end", ["succeed", "fail", "cancelled"])
def test_every_outbox_document_reads_as_the_job_it_recorded(store: SqlJobStore, end: str) -> None:
    """On PostgreSQL a submit, a progress write and an outcome build their outbox document in the
    statement that writes the row: other nodes read the very job this node publishes."""
    from sdgate.core.jobs import Progress

    seen: list[Job] = []
    queued = store.submit(GenerationRequest(prompt="p", seed=2**64 - 1), owner="key-a", priority=1,
                          metadata={"k": ["v", 1.5, None]}, dialect="a1111")
    seen.append(store.get(queued.id))
    started = store.claim_next("w")
    assert started is not None
    seen.append(store.get(queued.id))
    store.update_progress(queued.id, Progress(step=1, steps=2, fraction=0.5))
    seen.append(store.get(queued.id))
    if end == "succeed":
        store.succeed(queued.id, GenerationResult(model_name="m", steps=2), worker_id="w")
    elif end == "fail":
        store.fail(queued.id, {"code": "boom", "message": "no"}, worker_id="w")
    else:
        store.cancelled(queued.id, worker_id="w")
    seen.append(store.get(queued.id))
    outboxed = _outboxed(store, queued.id)
    assert [kind for kind, _ in outboxed] == ["queued", "started", "progress",
                                              {"succeed": "succeeded"}.get(end, "failed" if end == "fail"
                                                                           else "cancelled")]
    assert [job for _, job in outboxed] == seen
    assert all(j.created_at.utcoffset() is not None and j.created_at.utcoffset().total_seconds() == 0
               for _, j in outboxed)
    with transaction(store.database, write=False) as conn:
        usage = conn.execute(sa.select(daily_usage.c.principal, daily_usage.c.day,
                                       daily_usage.c.gpu_seconds)).all()
    finished = seen[-1]
    assert finished.started_at is not None and finished.finished_at is not None
    ran = (finished.finished_at - finished.started_at).total_seconds()
    assert [(p, d) for p, d, _ in usage] == [("key-a", finished.finished_at.date().isoformat())]
    assert usage[0][2] == pytest.approx(ran, abs=1e-5)
