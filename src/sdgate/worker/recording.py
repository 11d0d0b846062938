"""``GroupCommit``: a claimed group's outcomes recorded beside the worker, several per transaction.

While the worker runs a group of quick jobs (``Worker.run_once``), each finished job's outcome goes
to this thread instead of being written before the next job starts: the thread writes whatever
has gathered meanwhile in one call (``JobStore.finish_many``: one transaction, one NOTIFY), while
the worker already runs the next job. The classic group commit: nothing waits on a timer, a lone
outcome is written at once, and the busier the store, the more outcomes share a write.

Bounded: ``put`` blocks while ``max_pending`` outcomes wait, so a slow store slows the worker
rather than piling up finished jobs. Leaving the ``with`` block waits until every outcome handed
over was written (or given up by ``flush``), so the worker's group ends with its jobs recorded.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Generic, TypeVar

logger = logging.getLogger("sdgate.worker")

T = TypeVar("T")


class GroupCommit(Generic[T]):
    def __init__(self, flush: Callable[[list[T]], None], *, name: str, max_pending: int) -> None:
        if max_pending < 1:
            raise ValueError("max_pending must be at least 1")
        self._flush = flush  # writes a list of items; its own errors are its own to handle
        self._max_pending = max_pending
        self._items: list[T] = []
        self._closing = False
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)

    def __enter__(self) -> GroupCommit[T]:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._thread.join()

    def put(self, item: T) -> None:
        """Hands one item over; waits while ``max_pending`` are waiting already."""
        with self._cond:
            if self._closing:
                raise RuntimeError("the group commit is closed")
            while len(self._items) >= self._max_pending:
                self._cond.wait()
            self._items.append(item)
            self._cond.notify_all()

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._items and not self._closing:
                    self._cond.wait()
                if not self._items:  # closing, and everything handed over is written
                    return
                items, self._items = self._items, []
                self._cond.notify_all()  # room for the waiting ``put``
            try:
                self._flush(items)
            except Exception:  # never leaves the worker waiting on a dead thread
                logger.exception("recording %d outcome(s) failed", len(items))
