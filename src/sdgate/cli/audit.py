"""``sdgate audit``: the audit log, newest first, read from the server's job database (works while
the server runs; what a node still has queued shows up within a second or so).

    sdgate audit --key app1 --since 1h
    sdgate audit --since 2026-12-01 --until 2026-12-02 --status 429 --json

``--key`` takes an API key's id, name or prefix, or a Basic user's name; ``--since``/``--until`` a
duration back from now (``90s``, ``15m``, ``1h``, ``7d``, ``2w``), a date (its midnight, UTC) or an
ISO 8601 date-time. The table shows the time, the key (its id; a Basic user's name; ``-``: none),
dialect, method, route template, status, job, images, GPU seconds, ``filtered`` and the prompt when
the server audits prompts; ``--json`` prints the records as a JSON array.

Exit codes: 0 done, 1 the database could not be reached, 2 a usage error (a bad time or URL).
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import TYPE_CHECKING, Annotated

import typer

from sdgate.cli.common import ServerDatabaseOpt, ServerDataDirOpt, fail, server_database

if TYPE_CHECKING:
    from datetime import datetime

    from sdgate.jobs.audit import AuditRecord

WHEN = "1h, 7d, 2026-12-01 or an ISO 8601 date-time (UTC unless it says)"


def _when(value: str | None, option: str) -> datetime | None:
    from sdgate.jobs.audit import parse_when

    if value is None:
        return None
    try:
        return parse_when(value)
    except ValueError as exc:
        fail(f"{option}: {exc}", code=2, kind="UsageError")


def audit(
    key: Annotated[str | None, typer.Option("--key", help="An API key's id, name or prefix, or a Basic "
                                            "user's name.")] = None,
    since: Annotated[str | None, typer.Option("--since", help=f"From: {WHEN}.")] = None,
    until: Annotated[str | None, typer.Option("--until", help=f"Before: {WHEN}.")] = None,
    route: Annotated[str | None, typer.Option("--route", help="A route template, e.g. /sdapi/v1/txt2img.")]
    = None,
    status: Annotated[int | None, typer.Option("--status", min=100, max=599, help="An HTTP status.")] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, max=1000, help="At most this many records.")] = 50,
    database: ServerDatabaseOpt = None,
    data_dir: ServerDataDirOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
) -> None:
    """The audit log, newest first: who called which route, the status, job, images, GPU seconds."""
    from sdgate.jobs.audit import AuditFilter, key_matches, query_audit

    flt = AuditFilter(since=_when(since, "--since"), until=_when(until, "--until"), route=route,
                      status=status)
    with server_database(database, data_dir) as engine:
        if key is not None:
            flt = replace(flt, keys=key_matches(engine, key))
        records = query_audit(engine, flt, limit=limit).records
    if as_json:
        typer.echo(json.dumps([r.to_json() for r in records], indent=2))
        return
    if not records:
        typer.echo("no audit records")
        return
    for r in records:
        typer.echo(_line(r))


def _line(r: AuditRecord) -> str:
    who = _printable(r.key_id or r.principal or "-")
    gpu = f"{r.gpu_seconds:.2f}s" if r.gpu_seconds is not None else "-"
    parts = [
        r.at.strftime("%Y-%m-%dT%H:%M:%SZ"), f"{who:24.24s}", f"{r.dialect or '-':9s}", f"{r.method:6s}",
        f"{_printable(r.route):40s}", str(r.status), r.job_id or "-",
        str(r.images) if r.images is not None else "-", gpu,
    ]
    if r.filtered:
        parts.append("filtered")
    if r.prompt is not None:
        parts.append(json.dumps(r.prompt, ensure_ascii=False))
    return " ".join(parts)


def _printable(text: str) -> str:
    """A caller's text as a terminal shows it harmlessly (a Basic user name may hold escapes)."""
    return "".join(c if c.isprintable() else "?" for c in text)


def mount(app: typer.Typer) -> None:
    app.command(name="audit")(audit)
