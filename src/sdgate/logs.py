"""Logging for every sdgate process: one line per record, as text (the default) or as JSON.

    configure_logging("INFO", "json")   # --log-format json
    with log_context(job_id=job.id, worker_id=worker.worker_id): ...

A JSON line carries ``ts``, ``level``, ``logger``, ``message`` and, when known, ``request_id``,
``job_id``, ``dialect`` and ``worker_id``: taken from the record (``extra={"job_id": ...}``) or
else from the context variables below, which the HTTP middleware (request id, dialect) and the
worker (job id, worker id) set for the code they run. Exceptions go in ``exc``, one string.
Torch-free and FastAPI-free: the API, the workers and the CLI all use it.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Literal

LogFormat = Literal["text", "json"]
LOG_FORMATS: tuple[LogFormat, ...] = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
CONTEXT_FIELDS = ("request_id", "job_id", "dialect", "worker_id")

_context: dict[str, ContextVar[str | None]] = {
    name: ContextVar(f"sdgate_{name}", default=None) for name in CONTEXT_FIELDS
}


def context_var(name: str) -> ContextVar[str | None]:
    """The context variable behind one of ``CONTEXT_FIELDS``."""
    return _context[name]


@contextmanager
def log_context(**values: str | None) -> Iterator[None]:
    """Sets some of ``CONTEXT_FIELDS`` for the code inside (and the threads' records it logs)."""
    unknown = set(values) - set(CONTEXT_FIELDS)
    if unknown:
        raise ValueError(f"unknown log context field(s): {sorted(unknown)}")
    tokens = [(_context[name], _context[name].set(value)) for name, value in values.items()]
    try:
        yield
    finally:
        for var, token in reversed(tokens):
            var.reset(token)


class JsonFormatter(logging.Formatter):
    """One JSON object per line; never raises on odd values (they are written with ``repr``)."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in CONTEXT_FIELDS:
            value = getattr(record, name, None) or _context[name].get()
            if value is not None:
                line[name] = value
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False, default=repr)


def configure_logging(level: str = "INFO", fmt: LogFormat = "text") -> None:
    """The root logger writes to stderr in ``fmt``; replaces handlers set before (a second call,
    or uvicorn's defaults) so each record is written once."""
    if fmt not in LOG_FORMATS:
        raise ValueError(f"log format must be one of {', '.join(LOG_FORMATS)}")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("alembic").setLevel(logging.WARNING)  # one line per migration plugin otherwise
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        # uvicorn's loggers write through the root's handler, in the same format.
        uv = logging.getLogger(name)
        uv.handlers[:] = []
        uv.propagate = True
        uv.setLevel(logging.NOTSET)  # the root's level, until uvicorn applies --log-level

