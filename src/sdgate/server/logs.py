"""Logging a server does on behalf of its clients: what it accepts and ignores, said once.

Clients of another service send fields we do not use and names we map (STYLE: tolerant but
visible). Each is logged the first time it is seen in this process, not on every request:

    unknown_fields = LogOnce(log, "accepting and ignoring unknown OpenAI field(s): %s")
    unknown_fields.names(["generations.user", "generations.style"])  # one line, first time only
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable


class LogOnce:
    """``logger.info(message % ...)`` for names (or keys) this instance has not logged before."""

    def __init__(self, logger: logging.Logger, message: str) -> None:
        self._logger = logger
        self._message = message
        self._seen: set[str] = set()
        self._lock = threading.Lock()

    def _fresh(self, names: Iterable[str]) -> list[str]:
        with self._lock:
            fresh = [n for n in dict.fromkeys(names) if n not in self._seen]
            self._seen.update(fresh)
        return fresh

    def names(self, names: Iterable[str]) -> None:
        """One line naming every name not logged yet; nothing when there is none."""
        fresh = self._fresh(names)
        if fresh:
            self._logger.info(self._message, ", ".join(fresh))

    def once(self, key: str, *args: object) -> None:
        """``message % args`` the first time ``key`` is seen (``message`` with as many ``%s``)."""
        if self._fresh([key]):
            self._logger.info(self._message, *args)

    def forget(self, name: str) -> None:
        """Log ``name`` again next time (tests)."""
        with self._lock:
            self._seen.discard(name)
