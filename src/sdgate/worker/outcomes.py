"""``OutcomeRecorder``: group commit of a worker's outcomes.

A worker that claimed a group of quick jobs (``runner.QUICK_JOB_S``) runs them one after the other;
recording each one's end alone costs a statement, a commit, an outbox row's NOTIFY and a wake of
every listening node per job, which is most of what a queue of quick jobs spends. Instead the
worker ``put``s each end here and records them together (``JobStore.finish_many``: one statement on
PostgreSQL) when the group is done (``flush``, on the worker's thread). No end waits on the group
for long: a background thread records whatever has waited ``window_s`` (a quick job followed by a
slow one), so an end reaches the store and the callers at most about ``window_s`` later than alone.

    recorder = OutcomeRecorder(write)    # write(items): records them, handles its own errors
    recorder.put(item)                   # an end to record, soon
    recorder.flush()                     # everything put so far, recorded now (in order)
    recorder.stop()                      # the thread ends (after a last flush)

One write runs at a time, in the order the ends were put, whichever thread runs it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Generic, TypeVar

logger = logging.getLogger("sdgate.worker")

T = TypeVar("T")

# The longest an end waits for the rest of its group before the background thread records it.
OUTCOME_WINDOW_S = 0.02


class OutcomeRecorder(Generic[T]):
    def __init__(self, write: Callable[[list[T]], None], *, window_s: float = OUTCOME_WINDOW_S,
                 name: str = "sdgate-outcomes", clock: Callable[[], float] = time.monotonic) -> None:
        self._write = write
        self._window_s = window_s
        self._name = name
        self._clock = clock
        self._items: list[T] = []
        self._first_at = 0.0  # the clock when the oldest waiting item was put
        self._cond = threading.Condition()
        self._writing = threading.Lock()  # one write at a time, in order
        self._stopping = False
        self._thread: threading.Thread | None = None

    @property
    def waiting(self) -> int:
        """How many ends wait to be recorded."""
        with self._cond:
            return len(self._items)

    def put(self, item: T) -> None:
        """``item`` is recorded at the next ``flush``, or within about ``window_s`` from now."""
        with self._cond:
            self._items.append(item)
            if len(self._items) == 1:
                self._first_at = self._clock()
                if self._thread is None:
                    self._stopping = False
                    self._thread = threading.Thread(target=self._loop, name=self._name, daemon=True)
                    self._thread.start()
                self._cond.notify()

    def flush(self) -> None:
        """Records everything put so far, on the calling thread, after a write in progress."""
        with self._writing:
            with self._cond:
                items, self._items = self._items, []
            if items:
                self._write(items)

    def stop(self) -> None:
        """Records what waits and ends the background thread (``put`` starts it again)."""
        with self._cond:
            self._stopping = True
            thread, self._thread = self._thread, None
            self._cond.notify()
        if thread is not None and thread is not threading.current_thread():
            thread.join()
        self.flush()

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._stopping:
                    if self._items:
                        due = self._first_at + self._window_s - self._clock()
                        if due <= 0:
                            break
                        self._cond.wait(due)
                    else:
                        self._cond.wait()
                if self._stopping:
                    return
            try:
                self.flush()
            except Exception:  # ``write`` handles its errors; this thread must not die of one
                logger.exception("recording outcomes failed")
