from __future__ import annotations

import asyncio
import threading
import time

import pytest

from sdgate.core.errors import NotFound
from sdgate.core.jobs import ControlAction, Job, JobEventKind, JobState, Progress
from sdgate.core.requests import GenerationRequest
from sdgate.core.results import GenerationResult
from sdgate.jobs.events import JobEvents
from sdgate.jobs.store import SqlJobStore


def _run_later(delay: float, *steps: object) -> threading.Thread:
    def run() -> None:
        time.sleep(delay)
        for step in steps:
            step()  # type: ignore[operator]

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def _finish(store: SqlJobStore, job_id: str) -> tuple[object, ...]:
    return (
        lambda: store.claim_next("w"),
        lambda: store.update_progress(job_id, Progress(step=1, steps=2)),
        lambda: store.succeed(job_id, GenerationResult()),
    )


async def test_wait_terminal_wakes_on_the_event(store: SqlJobStore, events: JobEvents) -> None:
    job = store.submit(GenerationRequest())
    thread = _run_later(0.1, *_finish(store, job.id))
    started = time.monotonic()
    done = await events.wait_terminal(store, job.id, poll_s=30)  # a poll would take 30 s
    elapsed = time.monotonic() - started
    thread.join()
    assert done.state is JobState.SUCCEEDED
    assert elapsed < 5


async def test_wait_terminal_polls_for_changes_made_elsewhere(store: SqlJobStore, db_url: str) -> None:
    job = store.submit(GenerationRequest())
    with SqlJobStore(db_url) as other_process:  # publishes to nobody
        thread = _run_later(0.1, *_finish(other_process, job.id))
        done = await JobEvents().wait_terminal(store, job.id, poll_s=0.05)
        thread.join()
    assert done.state is JobState.SUCCEEDED


async def test_wait_terminal_returns_a_finished_job_at_once(store: SqlJobStore, events: JobEvents) -> None:
    job = store.submit(GenerationRequest())
    store.request_control(job.id, ControlAction.CANCEL)
    done = await events.wait_terminal(store, job.id, timeout=1)
    assert done.state is JobState.CANCELLED


async def test_wait_terminal_times_out(store: SqlJobStore, events: JobEvents) -> None:
    job = store.submit(GenerationRequest())
    with pytest.raises(TimeoutError):
        await events.wait_terminal(store, job.id, timeout=0.2, poll_s=0.05)


async def test_wait_terminal_of_an_unknown_job(store: SqlJobStore, events: JobEvents) -> None:
    with pytest.raises(NotFound):
        await events.wait_terminal(store, "job_nope")


async def test_subscribe_to_one_job_ends_after_its_terminal_event(
    store: SqlJobStore, events: JobEvents
) -> None:
    job = store.submit(GenerationRequest())
    other = store.submit(GenerationRequest())
    seen: list[tuple[JobEventKind, Job]] = []
    with events.subscribe(job.id) as subscription:
        thread = _run_later(
            0.05, *_finish(store, job.id), lambda: store.fail(other.id, {"code": "x", "message": "y"})
        )
        async with asyncio.timeout(10):
            async for kind, event_job in subscription:
                seen.append((kind, event_job))
        thread.join()
    assert [kind for kind, _ in seen] == [JobEventKind.STARTED, JobEventKind.PROGRESS, JobEventKind.SUCCEEDED]
    assert {j.id for _, j in seen} == {job.id}


async def test_subscribe_to_all_jobs(store: SqlJobStore, events: JobEvents) -> None:
    with events.subscribe() as subscription:
        a = await asyncio.to_thread(store.submit, GenerationRequest())
        b = await asyncio.to_thread(store.submit, GenerationRequest())
        got = [await subscription.__anext__() for _ in range(2)]
    assert [(k, j.id) for k, j in got] == [(JobEventKind.QUEUED, a.id), (JobEventKind.QUEUED, b.id)]
    # Closed: nothing more is delivered to it.
    await asyncio.to_thread(store.submit, GenerationRequest())
    await asyncio.sleep(0.05)
    assert subscription._queue.empty()


def test_listeners_are_called_removed_and_isolated(store: SqlJobStore, events: JobEvents) -> None:
    calls: list[JobEventKind] = []

    def broken(kind: JobEventKind, job: Job) -> None:
        raise RuntimeError("listener bug")

    events.add_listener(broken)
    remove = events.add_listener(lambda kind, job: calls.append(kind))
    store.submit(GenerationRequest())
    remove()
    store.submit(GenerationRequest())
    assert calls == [JobEventKind.QUEUED]


def test_a_subscription_whose_loop_closed_is_dropped(store: SqlJobStore, events: JobEvents) -> None:
    async def subscribe_and_leave() -> None:
        events.subscribe()  # never closed: its loop goes away

    asyncio.run(subscribe_and_leave())
    store.submit(GenerationRequest())  # must not raise
    assert events._subscriptions == set()


def test_signals_are_called_on_their_kind_published_or_signalled(
    store: SqlJobStore, events: JobEvents
) -> None:
    """``add_signal``: a callback with no job, for a kind published here or ``signal``led from
    another process (which the listeners, who need the job, do not hear); counted by ``wants``."""
    woken: list[str] = []
    heard: list[JobEventKind] = []
    events.add_listener(lambda kind, job: heard.append(kind), kinds=(JobEventKind.STARTED,))
    assert not events.wants(JobEventKind.QUEUED)
    remove = events.add_signal(JobEventKind.QUEUED, lambda: woken.append("queued"))
    events.add_signal(JobEventKind.QUEUED, lambda: 1 / 0)  # a failing one spoils nothing
    assert events.wants(JobEventKind.QUEUED)
    job = store.submit(GenerationRequest(prompt="x"))
    assert woken == ["queued"]
    store.claim_next("w")  # another kind: no signal
    events.signal(JobEventKind.QUEUED)
    events.signal(JobEventKind.STARTED)  # nobody signals on it; the listener is not called
    assert woken == ["queued", "queued"] and heard == [JobEventKind.STARTED]
    remove()
    remove()  # twice is harmless
    events.signal(JobEventKind.QUEUED)
    store.submit(GenerationRequest(prompt="y"))
    assert woken == ["queued", "queued"] and job.state is JobState.QUEUED
