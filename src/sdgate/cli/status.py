"""``sdgate status``: what a cluster is doing, from any API node: its workers (host, device, engine,
loaded models, free memory, current job, last seen, stale) and the queue depth by state
(``GET /api/v1/cluster``, through the SDK's ``Client.cluster``)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from sdgate.cli import common
from sdgate.cli.common import ApiKeyOpt, BackendOpt, ClientOptions, JsonOpt, handle_errors


def status(backend: BackendOpt = None, api_key: ApiKeyOpt = None, as_json: JsonOpt = False) -> None:
    """Show the workers of an sdgate server (or cluster) and its queue."""
    with handle_errors(), common.make_client(ClientOptions(backend, api_key)) as client:
        data = client.cluster()
    if as_json:
        typer.echo(json.dumps(data, indent=2, default=str))
        return
    console = Console(highlight=False)
    if not console.is_terminal:  # a pipe or a file: one line per worker, whatever the width
        console = Console(highlight=False, width=1000)
    console.print(workers_table(data.get("workers") or []))
    queue = data.get("queue") or {}
    console.print("queue: " + ", ".join(f"{state} {count}" for state, count in queue.items()))


def workers_table(workers: list[dict[str, Any]]) -> Table:
    table = Table(title=f"{len(workers)} worker(s)", title_justify="left")
    for column in ("worker", "host", "device", "engine", "models", "free memory", "current job", "last seen"):
        table.add_column(column)
    now = datetime.now(UTC)
    for w in workers:
        seen = _ago(w.get("last_seen"), now)
        table.add_row(
            str(w.get("id")),
            str(w.get("host")),
            str(w.get("device") or "-"),
            str(w.get("engine") or "-"),
            ", ".join(w.get("models") or []) or "-",
            _bytes(w.get("free_memory_bytes")),
            str(w.get("current_job") or "idle"),
            f"{seen} (stale)" if w.get("stale") else seen,
            style="dim" if w.get("stale") else None,
        )
    return table


def _bytes(value: Any) -> str:
    if not isinstance(value, int):
        return "-"
    return f"{value / 2**30:.1f} GiB" if value >= 2**30 else f"{value / 2**20:.0f} MiB"


def _ago(value: Any, now: datetime) -> str:
    try:
        then = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return "-"
    if then.tzinfo is None:
        then = then.replace(tzinfo=UTC)
    return f"{max(0.0, (now - then).total_seconds()):.0f} s ago"
