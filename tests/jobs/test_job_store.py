from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta

import pytest

from sdgate.core.errors import Conflict, NotFound, QueueFull
from sdgate.core.jobs import ControlAction, Job, JobEventKind, JobState, Progress
from sdgate.core.requests import MAX_SEED, GenerationRequest
from sdgate.core.results import GenerationResult, StoredImage
from sdgate.jobs.schema import jobs
from sdgate.jobs.store import SqlJobStore, new_job_id

# Past every lease a claim just took: the worker that holds it has died.
_LATER = datetime.now(UTC) + timedelta(hours=1)


def req(prompt: str = "a cat", **kw: object) -> GenerationRequest:
    return GenerationRequest(prompt=prompt, **kw)  # type: ignore[arg-type]


def result(seed: int = MAX_SEED) -> GenerationResult:
    image = StoredImage(id="img_" + "0" * 24, seed=seed, subseed=seed, width=64, height=64, infotext="x")
    return GenerationResult(images=(image,), prompts=("a cat",), model_name="m", steps=4)


def test_submit_and_get_round_trip(store: SqlJobStore) -> None:
    request = req(seed=MAX_SEED, subseed=MAX_SEED - 1, init_images=("img_a",), width=64)
    job = store.submit(request, dialect="a1111", owner="alice", priority=3, metadata={"k": [1, "two"]})

    got = store.get(job.id)
    assert got == job
    assert got.state is JobState.QUEUED
    assert got.request == request and got.request.seed == 2**64 - 1
    assert (got.dialect, got.owner, got.priority, got.metadata) == ("a1111", "alice", 3, {"k": [1, "two"]})
    assert got.created_at.tzinfo is UTC
    assert got.attempts == 0 and got.started_at is None and got.worker_id is None


def test_get_unknown_job_raises_not_found(store: SqlJobStore) -> None:
    with pytest.raises(NotFound):
        store.get("job_nope")
    with pytest.raises(NotFound):
        store.position("job_nope")
    with pytest.raises(NotFound):
        store.request_control("job_nope", ControlAction.CANCEL)


def test_job_ids_are_prefixed_unique_and_time_sortable() -> None:
    first = new_job_id()
    time.sleep(0.002)
    ids = [new_job_id() for _ in range(1000)]
    assert all(i.startswith("job_") and len(i) == 30 for i in ids)
    assert len(set(ids)) == len(ids)
    assert all(first < i for i in ids)


def test_list_is_newest_first_and_filters(store: SqlJobStore) -> None:
    a = store.submit(req("a"), dialect="a1111", owner="alice")
    b = store.submit(req("b"), dialect="native", owner="bob")
    c = store.submit(req("c"), dialect="a1111", owner="bob")
    store.claim_next("w")  # a runs

    assert [j.id for j in store.list()] == [c.id, b.id, a.id]
    assert [j.id for j in store.list(limit=2)] == [c.id, b.id]
    assert [j.id for j in store.list(dialect="a1111")] == [c.id, a.id]
    assert [j.id for j in store.list(owner="bob")] == [c.id, b.id]
    assert [j.id for j in store.list(states=(JobState.RUNNING,))] == [a.id]
    assert [j.id for j in store.list(states=(JobState.QUEUED,), dialect="a1111")] == [c.id]
    assert store.list(states=()) == []


def test_claims_follow_priority_then_fifo(store: SqlJobStore) -> None:
    a = store.submit(req("a"))
    b = store.submit(req("b"))
    c = store.submit(req("c"), priority=5)
    d = store.submit(req("d"))
    e = store.submit(req("e"), priority=5)
    f = store.submit(req("f"), priority=-1)
    expected = [c, e, a, b, d, f]

    assert store.queue_depth() == 6
    assert [store.position(j.id) for j in expected] == [0, 1, 2, 3, 4, 5]

    claimed = []
    while (job := store.claim_next("w1")) is not None:
        claimed.append(job.id)
    assert claimed == [j.id for j in expected]
    assert store.queue_depth() == 0
    assert store.position(a.id) is None


def test_claim_marks_running(store: SqlJobStore) -> None:
    assert store.claim_next("w1") is None
    job = store.submit(req())
    claimed = store.claim_next("w1")
    assert claimed is not None and claimed.id == job.id
    assert claimed.state is JobState.RUNNING
    assert claimed.worker_id == "w1" and claimed.attempts == 1
    assert claimed.started_at is not None and claimed.started_at >= job.created_at
    assert store.claim_next("w2") is None


def test_progress_is_stored_only_while_running(store: SqlJobStore) -> None:
    queued = store.submit(req())
    store.update_progress(queued.id, Progress(step=1, steps=4))
    assert store.get(queued.id).progress is None

    store.claim_next("w")
    progress = Progress(iteration=1, iterations=2, step=3, steps=4, eta_s=1.5)
    store.update_progress(queued.id, progress)
    assert store.get(queued.id).progress == progress


def test_cancel_of_a_queued_job_is_immediate(
    store: SqlJobStore, published: list[tuple[JobEventKind, Job]]
) -> None:
    job = store.submit(req())
    cancelled = store.request_control(job.id, ControlAction.CANCEL)
    assert cancelled.state is JobState.CANCELLED
    assert cancelled.finished_at is not None
    assert store.claim_next("w") is None
    assert [kind for kind, _ in published] == [JobEventKind.QUEUED, JobEventKind.CANCELLED]


def test_control_of_a_running_job_is_a_flag_that_never_weakens(store: SqlJobStore) -> None:
    job = store.submit(req())
    store.claim_next("w")
    assert store.pending_control(job.id) is None

    assert store.request_control(job.id, ControlAction.INTERRUPT).state is JobState.RUNNING
    store.request_control(job.id, ControlAction.SKIP)
    assert store.pending_control(job.id) is ControlAction.INTERRUPT
    store.request_control(job.id, ControlAction.CANCEL)
    assert store.pending_control(job.id) is ControlAction.CANCEL
    assert store.get(job.id).state is JobState.RUNNING  # the worker decides when it stops


def test_clear_control_only_clears_the_consumed_action(store: SqlJobStore) -> None:
    job = store.submit(req())
    store.claim_next("w")
    store.request_control(job.id, ControlAction.SKIP)
    store.clear_control(job.id, ControlAction.SKIP)
    assert store.pending_control(job.id) is None

    store.request_control(job.id, ControlAction.CANCEL)
    store.clear_control(job.id, ControlAction.SKIP)
    assert store.pending_control(job.id) is ControlAction.CANCEL


def test_control_of_a_finished_job_is_a_conflict(store: SqlJobStore) -> None:
    job = store.submit(req())
    store.claim_next("w")
    store.succeed(job.id, result())
    for action in ControlAction:
        with pytest.raises(Conflict):
            store.request_control(job.id, action)


def test_finishing_transitions(store: SqlJobStore) -> None:
    ok, bad, gone, early = (store.submit(req(p)) for p in "abcd")
    for _ in range(3):
        store.claim_next("w")

    done = store.succeed(ok.id, result())
    assert done.state is JobState.SUCCEEDED and done.result == result()
    assert done.result is not None and done.result.seeds == [MAX_SEED]
    assert done.finished_at is not None

    failed = store.fail(bad.id, {"code": "generation_failed", "message": "no"})
    assert failed.state is JobState.FAILED and failed.error == {"code": "generation_failed", "message": "no"}

    partial = result(seed=7)
    cancelled = store.cancelled(gone.id, partial)
    assert cancelled.state is JobState.CANCELLED and cancelled.result == partial

    with pytest.raises(Conflict):
        store.succeed(early.id, result())  # still queued
    with pytest.raises(Conflict):
        store.succeed(ok.id, result())  # already succeeded
    with pytest.raises(NotFound):
        store.fail("job_nope", {"code": "x", "message": "y"})
    assert store.cancelled(early.id).state is JobState.CANCELLED


def test_requeue_expired_requeues_or_fails_stranded_jobs(store: SqlJobStore) -> None:
    fresh, retried, exhausted, cancelling, failed, finished = (store.submit(req(p)) for p in "abcdef")
    for _ in range(4):
        store.claim_next("dead-worker")
    # ``retried`` ran once before; ``exhausted`` used all its attempts.
    with store.database.begin() as conn:
        conn.execute(jobs.update().where(jobs.c.id == retried.id).values(attempts=2))
        conn.execute(jobs.update().where(jobs.c.id == exhausted.id).values(attempts=3))
    store.request_control(cancelling.id, ControlAction.CANCEL)
    store.request_control(fresh.id, ControlAction.INTERRUPT)
    store.update_progress(fresh.id, Progress(step=2, steps=4))
    store.fail(failed.id, {"code": "x", "message": "y"})
    store.claim_next("w")
    store.succeed(finished.id, result())

    requeued = store.requeue_expired(now=_LATER, max_attempts=3)

    assert sorted(requeued) == sorted([fresh.id, retried.id])
    again = store.get(fresh.id)
    assert again.state is JobState.QUEUED
    assert again.attempts == 1 and again.worker_id is None and again.started_at is None
    assert again.progress is None and again.control is None
    assert store.get(retried.id).attempts == 2
    lost = store.get(exhausted.id)
    assert lost.state is JobState.FAILED and lost.error is not None and lost.error["code"] == "worker_lost"
    assert store.get(cancelling.id).state is JobState.CANCELLED
    assert store.get(failed.id).state is JobState.FAILED
    assert store.get(finished.id).state is JobState.SUCCEEDED
    assert store.requeue_expired(now=_LATER, max_attempts=3) == []
    # Re-queued jobs keep their place in the queue: ``fresh`` was submitted first.
    claimed = store.claim_next("w2")
    assert claimed is not None and claimed.id == fresh.id and claimed.attempts == 2


def test_max_queue_raises_queue_full(db_url: str) -> None:
    with SqlJobStore(db_url, max_queue=2) as store:
        store.submit(req())
        store.submit(req())
        with pytest.raises(QueueFull):
            store.submit(req())
        store.claim_next("w")
        store.submit(req())  # a running job does not count
        assert store.queue_depth() == 2


def test_every_change_is_published(store: SqlJobStore, published: list[tuple[JobEventKind, Job]]) -> None:
    job = store.submit(req())
    store.claim_next("w")
    store.update_progress(job.id, Progress(step=1, steps=2))
    store.request_control(job.id, ControlAction.INTERRUPT)  # a flag, not a state change
    store.succeed(job.id, result())

    assert [kind for kind, _ in published] == [
        JobEventKind.QUEUED,
        JobEventKind.STARTED,
        JobEventKind.PROGRESS,
        JobEventKind.SUCCEEDED,
    ]
    assert published[2][1].progress == Progress(step=1, steps=2)
    assert published[-1][1] == store.get(job.id)


def test_in_memory_database_is_shared_across_threads() -> None:
    with SqlJobStore("sqlite://") as store:
        job = store.submit(req())
        seen: list[Job | None] = []
        thread = threading.Thread(target=lambda: seen.append(store.claim_next("w")))
        thread.start()
        thread.join()
        assert seen[0] is not None and seen[0].id == job.id


def test_a_second_store_on_the_same_file_sees_the_same_jobs(store: SqlJobStore, db_url: str) -> None:
    job = store.submit(req())
    with SqlJobStore(db_url) as other:
        assert other.get(job.id) == job
        claimed = other.claim_next("elsewhere")
    assert claimed is not None
    assert store.get(job.id).state is JobState.RUNNING


def test_delete_removes_a_terminal_job_only(store: SqlJobStore) -> None:
    from sdgate.core.errors import Conflict, NotFound

    job = store.submit(GenerationRequest(prompt="bye"))
    with pytest.raises(Conflict):
        store.delete(job.id)
    store.request_control(job.id, ControlAction.CANCEL)
    assert store.delete(job.id).id == job.id
    with pytest.raises(NotFound):
        store.get(job.id)
    with pytest.raises(NotFound):
        store.delete(job.id)


def test_page_walks_newest_first_with_filters(store: SqlJobStore) -> None:
    ids = [store.submit(GenerationRequest(prompt=str(i)), metadata={"k": f"v{i % 2}"}).id for i in range(5)]
    first, cursor = store.page(limit=2)
    assert [j.id for j in first] == ids[::-1][:2] and cursor is not None
    rest, end = store.page(limit=10, before_seq=cursor)
    assert [j.id for j in rest] == ids[::-1][2:] and end is None
    odd, _ = store.page(metadata={"k": "v1"})
    assert [j.id for j in odd] == [ids[3], ids[1]]


def test_count_by_state_counts_every_state(store: SqlJobStore) -> None:
    assert store.count_by_state() == {s.value: 0 for s in JobState}
    a = store.submit(GenerationRequest(prompt="a"))
    store.submit(GenerationRequest(prompt="b"))
    store.submit(GenerationRequest(prompt="c"))
    claimed = store.claim_next("w1")
    assert claimed is not None and claimed.id == a.id
    store.fail(a.id, {"code": "x", "message": "y"}, worker_id="w1")
    assert store.claim_next("w1") is not None
    assert store.count_by_state() == {"queued": 1, "running": 1, "succeeded": 0, "failed": 1, "cancelled": 0}
