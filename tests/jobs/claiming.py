"""Claims from several threads at once, as worker nodes race for the same queue."""

from __future__ import annotations

import threading
from collections.abc import Callable

from sdgate.core.jobs import Job


def claim_concurrently(take: Callable[[str], list[Job]], *, workers: int = 4,
                       timeout_s: float = 60) -> list[str]:
    """Runs ``take(worker_id)`` in ``workers`` threads (``w0``, ``w1``, ...), each until a call takes
    nothing; every job id taken, in the order they were taken (duplicates kept, so a test sees them)."""
    claimed: list[str] = []
    lock = threading.Lock()

    def claim(worker: str) -> None:
        while jobs := take(worker):
            with lock:
                claimed.extend(job.id for job in jobs)

    threads = [threading.Thread(target=claim, args=(f"w{i}",)) for i in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout_s)
    assert not any(thread.is_alive() for thread in threads), "a claiming thread did not finish"
    return claimed
