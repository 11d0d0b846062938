"""Out of memory inside an engine: recognised whatever raised it, and the memory given back.

An engine may raise ``torch.OutOfMemoryError`` (CUDA, and ``torch.cuda.OutOfMemoryError`` is the
same class), a ``RuntimeError`` from the CPU or MPS allocator, or Python's own ``MemoryError``; the
worker turns each into ``OutOfMemory`` for that job and goes on with the next. Torch is looked up,
never imported: an engine that raised a torch error has imported it already.
"""

from __future__ import annotations

import gc
import re
import sys

from sdgate.core.errors import OutOfMemory

# Lower-cased fragments of the allocators' RuntimeError messages.
_OOM_MESSAGES = ("out of memory", "can't allocate memory", "not enough memory", "defaultcpuallocator")
# c10's "[enforce fail at alloc_cpu.cpp:127] err == 0. " says nothing to a user.
_ENFORCE_PREFIX = re.compile(r"^\[enforce fail at [^\]]*\]\s*(?:[^.]*\.\s+)?")
_MAX_DETAIL = 300


def is_out_of_memory(exc: BaseException) -> bool:
    if isinstance(exc, MemoryError):
        return True
    torch = sys.modules.get("torch")
    if torch is not None:
        candidates = (getattr(torch, "OutOfMemoryError", None), getattr(torch.cuda, "OutOfMemoryError", None))
        kinds = tuple(k for k in candidates if isinstance(k, type))
        if kinds and isinstance(exc, kinds):
            return True
    return isinstance(exc, RuntimeError) and any(m in str(exc).lower() for m in _OOM_MESSAGES)


def out_of_memory_error(exc: BaseException) -> OutOfMemory:
    """The job's error: what the allocator said (first line, trimmed) and what to lower."""
    lines = str(exc).strip().splitlines()
    detail = _ENFORCE_PREFIX.sub("", lines[0]) if lines else type(exc).__name__
    if len(detail) > _MAX_DETAIL:
        detail = detail[:_MAX_DETAIL] + "..."
    return OutOfMemory(f"out of memory: {detail or type(exc).__name__}; try a smaller size or batch")


def release_memory() -> None:
    """Give back what the failed job held: unreachable tensors, then CUDA's cached blocks. Call it
    outside the ``except`` block, whose traceback still pins the job's tensors."""
    gc.collect()
    torch = sys.modules.get("torch")
    if torch is None:
        return
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()
    mps = getattr(torch, "mps", None)
    if mps is not None and torch.backends.mps.is_available():
        mps.empty_cache()
