"""``JobEvents``: in-process delivery of job changes, from the threads that make them (the store,
called by workers and request handlers) to whoever waits (worker wake-ups, blocking HTTP routes,
event streams).

An optimisation, never the source of truth: another process's changes arrive here only through
this process's ``OutboxFollower`` (a poll behind), so ``wait_terminal`` also polls the store.

    events = JobEvents()
    store = SqlJobStore(url, events=events)          # the store publishes every change
    events.add_listener(fn)                          # fn(kind, job) on the publishing thread
    events.add_signal(JobEventKind.QUEUED, fn)       # fn() for a submission, here or signalled
    job = await events.wait_terminal(store, job_id)  # asyncio: wakes on an event or a poll
    with events.subscribe(job_id) as sub:            # asyncio: an event stream (SSE)
        async for kind, job in sub: ...
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import Counter
from collections.abc import Callable, Collection
from types import TracebackType
from typing import Generic, ParamSpec

from sdgate.core.jobs import Job, JobEventKind, JobStore

logger = logging.getLogger(__name__)

P = ParamSpec("P")
Listener = Callable[[JobEventKind, Job], None]

TERMINAL_EVENTS = frozenset({JobEventKind.SUCCEEDED, JobEventKind.FAILED, JobEventKind.CANCELLED})
# A subscriber this far behind loses progress events (never state changes) instead of memory.
MAX_BACKLOG = 256
DEFAULT_POLL_S = 0.5


class Listeners(Generic[P]):
    """A thread-safe list of callbacks, called in the order added; one that raises is logged and
    the others still run. Shared by ``JobEvents`` and the outbox follower."""

    def __init__(self, what: str) -> None:
        self._what = what  # for the log line: "event listener", "outbox listener"
        self._lock = threading.Lock()
        self._items: list[Callable[P, None]] = []

    def add(self, listener: Callable[P, None]) -> Callable[[], None]:
        """Adds ``listener``; returns the function that removes it (calling it twice is harmless)."""
        with self._lock:
            self._items.append(listener)

        def remove() -> None:
            with self._lock:
                if listener in self._items:
                    self._items.remove(listener)

        return remove

    def call(self, job_id: str, *args: P.args, **kwargs: P.kwargs) -> None:
        """Calls every listener (a snapshot: one may add or remove listeners meanwhile)."""
        with self._lock:
            listeners = list(self._items)
        for listener in listeners:
            try:
                listener(*args, **kwargs)
            except Exception:
                logger.exception("job %s: %s failed", job_id, self._what)


class JobEvents:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._listeners: Listeners[[JobEventKind, Job]] = Listeners("event listener")
        self._subscriptions: set[Subscription] = set()
        # What the listeners want: how many want every kind, and how many want each kind.
        self._every_kind = 0
        self._wanted: Counter[JobEventKind] = Counter()
        self._signals: dict[JobEventKind, Listeners[[]]] = {k: Listeners("signal") for k in JobEventKind}
        self._signalled: Counter[JobEventKind] = Counter()  # how many signal callbacks per kind

    def publish(self, kind: JobEventKind, job: Job) -> None:
        """Thread-safe; returns at once (listeners are expected to be quick)."""
        with self._lock:
            subscriptions = [s for s in self._subscriptions if s.job_id in (None, job.id)]
            signalled = self._signalled[kind] > 0
        self._listeners.call(job.id, kind, job)
        for subscription in subscriptions:
            subscription.deliver(kind, job)
        if signalled:
            self._signals[kind].call(job.id)

    def add_signal(self, kind: JobEventKind, callback: Callable[[], None]) -> Callable[[], None]:
        """``callback()`` whenever an event of ``kind`` is published here, or ``signal``led: the
        callers that only need to know that something of ``kind`` happened (a worker woken by a
        submission), which a worker node's outbox follower serves without reading any row (see
        ``OutboxFollower.start``). Returns the function that removes it."""
        remove = self._signals[kind].add(callback)
        with self._lock:
            self._signalled[kind] += 1
        return self._remover(remove, lambda: self._signalled.subtract((kind,)))

    def signal(self, kind: JobEventKind) -> None:
        """Another process made a change of ``kind`` that this one does not read: the ``add_signal``
        callbacks of ``kind`` run (the listeners and subscriptions, which need the job, do not)."""
        self._signals[kind].call("-")

    def add_listener(self, listener: Listener, *, kinds: Collection[JobEventKind] | None = None
                     ) -> Callable[[], None]:
        """Calls ``listener(kind, job)`` on the publishing thread, for every event or only those of
        ``kinds``; returns the function that removes it. Naming ``kinds`` lets this process's
        outbox follower leave other processes' events of other kinds unread (``wants``)."""
        wanted = frozenset(kinds) if kinds is not None else None
        if wanted is None:
            remove = self._listeners.add(listener)
        else:
            remove = self._listeners.add(lambda kind, job: listener(kind, job) if kind in wanted else None)
        with self._lock:
            if wanted is None:
                self._every_kind += 1
            else:
                self._wanted.update(wanted)

        def uncount() -> None:
            if wanted is None:
                self._every_kind -= 1
            else:
                self._wanted.subtract(wanted)

        return self._remover(remove, uncount)

    def _remover(self, remove: Callable[[], None], uncount: Callable[[], None]) -> Callable[[], None]:
        """What ``add_listener`` / ``add_signal`` return: removes the callback and, under the lock and
        only the first time it is called, takes it out of the counts ``wants`` reads."""
        removed = False

        def remover() -> None:
            nonlocal removed
            remove()
            with self._lock:
                if not removed:
                    removed = True
                    uncount()

        return remover

    def wants(self, kind: JobEventKind) -> bool:
        """Whether anyone here would hear an event of ``kind``: a listener of every kind or of this
        one, a signal callback of this one, or an open subscription."""
        with self._lock:
            return bool(self._every_kind or self._wanted[kind] > 0 or self._signalled[kind] > 0
                        or self._subscriptions)

    def subscribe(self, job_id: str | None = None) -> Subscription:
        """Events for one job (the iteration ends after its terminal event) or, with ``None``, for
        all jobs. Call from a running event loop; use as a ``with`` block so it is removed."""
        subscription = Subscription(self, job_id, asyncio.get_running_loop())
        with self._lock:
            self._subscriptions.add(subscription)
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        with self._lock:
            self._subscriptions.discard(subscription)

    async def wait_terminal(
        self,
        store: JobStore,
        job_id: str,
        *,
        timeout: float | None = None,
        poll_s: float = DEFAULT_POLL_S,
    ) -> Job:
        """The job once it is succeeded, failed or cancelled. Raises ``NotFound``, and
        ``TimeoutError`` after ``timeout`` seconds."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        # Subscribe before the first read, so a change between the two is not missed.
        with self.subscribe(job_id) as subscription:
            job = await asyncio.to_thread(store.get, job_id)
            while not job.state.terminal:
                wait = poll_s if deadline is None else min(poll_s, deadline - loop.time())
                if wait <= 0:
                    raise TimeoutError(f"job {job_id} did not finish within {timeout} s")
                try:
                    async with asyncio.timeout(wait):
                        _, job = await subscription.__anext__()
                except TimeoutError:
                    job = await asyncio.to_thread(store.get, job_id)
        return job


class Subscription:
    """An async iterator of ``(kind, job)``; made by ``JobEvents.subscribe``."""

    def __init__(self, events: JobEvents, job_id: str | None, loop: asyncio.AbstractEventLoop) -> None:
        self.job_id = job_id
        self._events = events
        self._loop = loop
        self._queue: asyncio.Queue[tuple[JobEventKind, Job]] = asyncio.Queue()
        self._finished = False

    def deliver(self, kind: JobEventKind, job: Job) -> None:
        """From any thread."""
        try:
            self._loop.call_soon_threadsafe(self._put, kind, job)
        except RuntimeError:  # the loop is closed: its reader is gone
            self._events.unsubscribe(self)

    def _put(self, kind: JobEventKind, job: Job) -> None:
        if kind is JobEventKind.PROGRESS and self._queue.qsize() >= MAX_BACKLOG:
            return
        self._queue.put_nowait((kind, job))

    def close(self) -> None:
        self._events.unsubscribe(self)

    def __enter__(self) -> Subscription:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> tuple[JobEventKind, Job]:
        if self._finished:
            raise StopAsyncIteration
        kind, job = await self._queue.get()
        if self.job_id is not None and kind in TERMINAL_EVENTS:
            self._finished = True
        return kind, job
