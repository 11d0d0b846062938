"""A least-recently-used cache of loaded models, bounded by a memory budget.

Switching between a few checkpoints should not reload them each time, but device memory is
finite: before a model is loaded, the least recently used ones are unloaded until the new one
(estimated from its file size) fits. The model in use is never evicted by itself: one model that
exceeds the budget still loads, alone.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Generic, TypeVar

log = logging.getLogger("sdgate.engine")

T = TypeVar("T")


@dataclass
class _Entry(Generic[T]):
    value: T
    size: int


class ModelCache(Generic[T]):
    def __init__(self, budget_bytes: int, *, on_evict: Callable[[str, T], None] | None = None) -> None:
        self.budget_bytes = budget_bytes
        self._on_evict = on_evict
        self._entries: OrderedDict[str, _Entry[T]] = OrderedDict()
        self._lock = threading.RLock()

    @property
    def used_bytes(self) -> int:
        with self._lock:
            return sum(e.size for e in self._entries.values())

    def keys_by_age(self) -> list[str]:
        """Least recently used first."""
        with self._lock:
            return list(self._entries)

    def get(self, key: str) -> T | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            self._entries.move_to_end(key)
            return entry.value

    def make_room(self, size: int, *, keep: str | Collection[str] | None = None) -> None:
        """Evict least recently used entries (never those in ``keep``) until ``size`` more bytes fit."""
        kept = {keep} if isinstance(keep, str) else set(keep or ())
        with self._lock:
            for key in list(self._entries):
                if self.used_bytes + size <= self.budget_bytes:
                    break
                if key not in kept:
                    self.evict(key)

    def put(self, key: str, value: T, size: int, *, keep: str | Collection[str] | None = None) -> None:
        """Add ``key``; ``keep`` (models the running job also needs) are never evicted for it."""
        with self._lock:
            if key in self._entries:
                self.evict(key)
            self.make_room(size, keep=keep)
            self._entries[key] = _Entry(value, size)
            log.info(
                "model cache: %s loaded (%.1f MiB; %.1f of %.1f MiB used)",
                key,
                size / 2**20,
                self.used_bytes / 2**20,
                self.budget_bytes / 2**20,
            )

    def evict(self, key: str) -> None:
        with self._lock:
            entry = self._entries.pop(key, None)
        if entry is not None:
            log.info("model cache: unloading %s", key)
            if self._on_evict is not None:
                self._on_evict(key, entry.value)

    def clear(self) -> None:
        for key in self.keys_by_age():
            self.evict(key)
