"""Two nodes on one PostgreSQL database: events cross by LISTEN/NOTIFY (not by the poll), a follower
outlives its LISTEN connection, and a cancel asked on one node stops the job a worker of the other
runs."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import pytest
import sqlalchemy as sa

from sdgate.core.engine import StepAction, StepReport
from sdgate.core.jobs import ControlAction, JobEventKind, JobState, Progress
from sdgate.core.requests import GenerationRequest
from sdgate.core.results import GenerationResult
from sdgate.jobs.database import transaction
from sdgate.jobs.events import JobEvents
from sdgate.jobs.outbox import OutboxFollower, read_after
from sdgate.jobs.store import SqlJobStore
from sdgate.worker.control import JobControl
from tests.jobs.conftest import PgServer

pytestmark = pytest.mark.cluster

SLOW_POLL_S = 10.0  # a follower that only polled would see nothing within the tests' deadlines


@dataclass
class Node:
    store: SqlJobStore
    events: JobEvents
    outbox: HearingFollower
    seen: list[tuple[JobEventKind, str]]

    def wait_for(self, kind: JobEventKind, job_id: str, timeout: float) -> float:
        """Seconds until this node's bus published ``kind`` for ``job_id``; fails after ``timeout``."""
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            if (kind, job_id) in self.seen:
                return time.monotonic() - started
            time.sleep(0.005)
        pytest.fail(f"{kind.value} of {job_id} not published within {timeout} s")


class HearingFollower(OutboxFollower):
    """Records the payloads of the notifications its listener hears."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.heard: list[str] = []

    def notified(self, payloads: frozenset[str] | None) -> None:
        self.heard.extend(payloads or ())
        super().notified(payloads)

    def _submitted(self, payloads: frozenset[str] | None) -> None:  # a worker node's (queued_only)
        self.heard.extend(payloads or ())
        super()._submitted(payloads)


@contextmanager
def node(url: str, *, listen_all: bool = True, queued_only: bool | None = None) -> Iterator[Node]:
    """What ``open_stores`` wires, with a follower that polls only every SLOW_POLL_S. ``seen``
    records every event the bus publishes, and with ``listen_all=False`` only ``queued`` ones;
    ``queued_only`` (by default ``not listen_all``): the follower of a worker node."""
    events = JobEvents()
    store = SqlJobStore(url, events=events)
    outbox = HearingFollower(store.database, origin=store.origin, bus=events, poll_s=SLOW_POLL_S)
    store.on_commit(outbox.wake)
    seen: list[tuple[JobEventKind, str]] = []
    kinds = None if listen_all else (JobEventKind.QUEUED,)
    events.add_listener(lambda kind, job: seen.append((kind, job.id)), kinds=kinds)
    outbox.start(queued_only=not listen_all if queued_only is None else queued_only)
    try:
        assert outbox.notifications is not None
        assert outbox.notifications.listening.wait(5), "the follower never LISTENed"
        yield Node(store, events, outbox, seen)
    finally:
        outbox.stop()
        store.close()


@pytest.fixture
def pg_url(pg_server: PgServer) -> Iterator[str]:
    with pg_server.database() as url:
        yield url


def test_an_event_of_one_node_reaches_the_other_by_notify(pg_url: str) -> None:
    with node(pg_url) as a, node(pg_url) as b:
        time.sleep(0.2)  # both followers past their first read
        for _ in range(3):
            job = a.store.submit(GenerationRequest(prompt="across"))
            assert b.wait_for(JobEventKind.QUEUED, job.id, timeout=0.5) < 0.5
            claimed = b.store.claim_next("worker-on-b")
            assert claimed is not None and claimed.id == job.id
            assert a.wait_for(JobEventKind.STARTED, job.id, timeout=0.5) < 0.5


def test_a_worker_node_is_woken_by_submissions_and_reads_no_row(pg_url: str) -> None:
    """A worker node's follower LISTENs on the submissions' channel alone and reads no outbox row:
    another node's submission signals its bus (what wakes its workers), and claims and outcomes
    ring on another channel, which it does not hear; an API node's hears everything."""
    with node(pg_url) as api, node(pg_url, listen_all=False) as worker:
        woken = threading.Event()
        worker.events.add_signal(JobEventKind.QUEUED, woken.set)
        time.sleep(0.2)
        woken.clear()  # the signal of the LISTEN's start
        job = api.store.submit(GenerationRequest(prompt="heard"))
        assert woken.wait(0.5)  # by its NOTIFY
        claimed = api.store.claim_next("worker-elsewhere")
        assert claimed is not None
        api.store.succeed(job.id, GenerationResult(), worker_id="worker-elsewhere")
        time.sleep(0.3)  # long enough for a notification to arrive
        assert {payload.split()[1] for payload in worker.outbox.heard} == {"queued"}
        assert worker.seen == []  # no row read: its bus published no event
        assert {payload.split()[1] for payload in api.outbox.heard} >= {"started", "succeeded"}


def test_a_worker_node_is_signalled_after_its_listen_connection_comes_back(pg_url: str) -> None:
    """What was submitted while the LISTEN was down is not lost: the reconnection signals."""
    with node(pg_url) as api, node(pg_url, listen_all=False) as worker:
        listener = worker.outbox.notifications
        assert listener is not None
        woken = threading.Event()
        worker.events.add_signal(JobEventKind.QUEUED, woken.set)
        time.sleep(0.2)
        woken.clear()
        _terminate(pg_url, listener.backend_pid)
        api.store.submit(GenerationRequest(prompt="in the gap"))
        assert woken.wait(10)


def test_the_follower_survives_the_loss_of_its_listen_connection(pg_url: str) -> None:
    with node(pg_url) as a, node(pg_url) as b:
        listener = b.outbox.notifications
        assert listener is not None
        old_pid = listener.backend_pid
        _terminate(pg_url, old_pid)
        deadline = time.monotonic() + 10
        while listener.backend_pid == old_pid or not listener.listening.is_set():
            assert time.monotonic() < deadline, "the listener did not reconnect"
            time.sleep(0.02)
        job = a.store.submit(GenerationRequest(prompt="after the loss"))
        assert b.wait_for(JobEventKind.QUEUED, job.id, timeout=0.5) < 0.5


def test_an_event_committed_while_the_listen_connection_was_down_is_not_lost(pg_url: str) -> None:
    with node(pg_url) as a, node(pg_url) as b:
        listener = b.outbox.notifications
        assert listener is not None
        _terminate(pg_url, listener.backend_pid)
        job = a.store.submit(GenerationRequest(prompt="in the gap"))
        # Read on reconnection (or the poll), long before SLOW_POLL_S.
        b.wait_for(JobEventKind.QUEUED, job.id, timeout=5)


def test_a_cancel_asked_on_one_node_stops_the_job_a_worker_of_the_other_runs(pg_url: str) -> None:
    with SqlJobStore(pg_url) as api_node, SqlJobStore(pg_url) as worker_node:
        job = api_node.submit(GenerationRequest(prompt="stop me", steps=1000))
        claimed = worker_node.claim_next("gpu-1")
        assert claimed is not None and claimed.id == job.id
        control = JobControl(worker_node, job.id)
        report = StepReport(iteration=0, iterations=1, step=1, steps=1000)
        assert control.on_step(report) is StepAction.CONTINUE
        asked = api_node.request_control(job.id, ControlAction.CANCEL)
        assert asked.state is JobState.RUNNING  # running: only its worker can stop it
        assert control.on_step(report) is StepAction.CANCEL
        worker_node.cancelled(job.id, worker_id="gpu-1")
        assert api_node.get(job.id).state is JobState.CANCELLED


def _terminate(url: str, pid: int | None) -> None:
    assert pid is not None
    engine = sa.create_engine(sa.make_url(url), poolclass=sa.NullPool)
    try:
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": pid}).scalar() is True
    finally:
        engine.dispose()



def test_a_follower_whose_bus_wants_submissions_alone_wakes_for_those_alone(pg_url: str) -> None:
    """A follower that reads rows wakes and decodes by what its bus wants: with listeners of
    ``queued`` events only, other nodes' progress and outcomes do not wake it, and their rows are
    read without their job snapshots; a submission wakes it at once."""
    with node(pg_url) as a, node(pg_url, listen_all=False, queued_only=False) as b:
        heard: list[tuple[JobEventKind, str]] = []
        b.events.add_listener(lambda kind, job: heard.append((kind, job.id)), kinds=(JobEventKind.QUEUED,))
        assert b.events.wants(JobEventKind.QUEUED) and not b.events.wants(JobEventKind.SUCCEEDED)
        reads = 0
        poll_once = b.outbox.poll_once

        def counted() -> int:
            nonlocal reads
            reads += 1
            return poll_once()

        b.outbox.poll_once = counted  # type: ignore[method-assign]
        job = a.store.submit(GenerationRequest(prompt="wake b"))
        b.wait_for(JobEventKind.QUEUED, job.id, timeout=5)
        time.sleep(0.2)
        woken = reads
        assert heard == [(JobEventKind.QUEUED, job.id)] and woken >= 1
        assert a.store.claim_next("w") is not None
        a.store.update_progress(job.id, Progress(step=1, steps=2))
        a.store.succeed(job.id, GenerationResult(), worker_id="w")
        a.wait_for(JobEventKind.SUCCEEDED, job.id, timeout=5)
        time.sleep(0.5)  # no notification it wants: no read before its slow poll
        assert reads == woken
        assert heard == [(JobEventKind.QUEUED, job.id)]
        with transaction(b.store.database, write=False) as conn:
            rows = read_after(conn, (0, 0), kinds=["queued"]).rows
        assert [(r.kind, r.job is not None) for r in rows] == [
            ("queued", True), ("started", False), ("progress", False), ("succeeded", False)]
