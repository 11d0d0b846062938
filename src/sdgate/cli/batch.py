"""``sdgate batch prompts.txt|prompts.jsonl -o outdir``: many prompts, bounded concurrency,
resumable (items already in ``outdir`` are skipped), a progress bar; exit 1 if any item failed.
``generate``'s request flags (``--sampler``, ``--cfg``, ``--hires``, ``--lora``, ...) are defaults
for every line; a JSONL line's own fields win."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from sdgate.cli import common
from sdgate.cli.common import (
    ApiKeyOpt,
    BackendOpt,
    ClientOptions,
    JsonOpt,
    RetriesOpt,
    TimeoutOpt,
    fail,
    handle_errors,
    progress_bar,
    request_options,
)
from sdgate.client import BatchItem
from sdgate.client._constants import DEFAULT_MAX_RETRIES


def read_prompts(path: Path) -> list[dict[str, Any]]:
    """One prompt per line (``.txt``; blank lines and ``#`` comments skipped) or one JSON object per
    line (``.jsonl``: ``{"prompt": ..., "seed": ..., "n": ...}`` with any request field)."""
    rows: list[dict[str, Any]] = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        if path.suffix.lower() in (".jsonl", ".ndjson") or text.startswith("{"):
            try:
                row = json.loads(text)
            except ValueError as exc:
                fail(f"{path}:{number}: not JSON ({exc})", code=2, kind="UsageError")
            if not isinstance(row, dict) or not isinstance(row.get("prompt"), str):
                fail(f"{path}:{number}: expected an object with a 'prompt' string", code=2, kind="UsageError")
            rows.append(row)
        else:
            rows.append({"prompt": text})
    return rows


@request_options
def batch(
    prompts: Annotated[
        Path, typer.Argument(exists=True, dir_okay=False, help="prompts.txt or prompts.jsonl")
    ],
    out: Annotated[Path, typer.Option("-o", "--out", file_okay=False, help="Output folder (resumable).")],
    fields: dict[str, Any],  # generate's request flags (request_options): defaults for every line
    concurrency: Annotated[int, typer.Option("--concurrency", "-c", min=1, help="Requests in flight.")] = 4,
    backend: BackendOpt = None,
    api_key: ApiKeyOpt = None,
    retries: RetriesOpt = DEFAULT_MAX_RETRIES,
    timeout: TimeoutOpt = 600.0,
    as_json: JsonOpt = False,
) -> None:
    """Run every prompt of a file; write images and a .json record per item into OUT.

    The request flags are defaults for every line; a JSONL line's own fields win."""
    rows = [{**fields, **row} for row in read_prompts(prompts)]
    failures: list[BatchItem] = []
    counts = {"done": 0, "skipped": 0, "failed": 0}
    options = ClientOptions(backend, api_key, retries, timeout)
    with (
        handle_errors(),
        common.make_client(options) as client,
        progress_bar(not as_json, f"{len(rows)} prompts", total=len(rows)) as update,
    ):

        def on_item(item: BatchItem) -> None:
            key = "failed" if not item.ok else "skipped" if item.skipped else "done"
            counts[key] += 1
            if not item.ok:
                failures.append(item)
            update(advance=1)

        try:
            items = client.batch(rows, concurrency=concurrency, output_dir=out, on_item=on_item)
        except TypeError as exc:
            fail(str(exc), code=2, kind="UsageError")
    if as_json:
        typer.echo(
            json.dumps(
                [
                    {
                        "index": it.index,
                        "prompt": it.request.prompt,
                        "ok": it.ok,
                        "skipped": it.skipped,
                        "images": [str(p) for p in it.paths],
                        "error": None if it.ok else f"{type(it.error).__name__}: {it.error}",
                    }
                    for it in items
                ],
                indent=2,
            )
        )
    else:
        typer.echo(
            f"{counts['done']} done, {counts['skipped']} skipped (already in {out}), "
            f"{counts['failed']} failed"
        )
    for item in sorted(failures, key=lambda it: it.index):
        typer.echo(
            f"item {item.index} ({item.request.prompt[:40]!r}): {type(item.error).__name__}: {item.error}",
            err=True,
        )
    if failures:
        raise typer.Exit(1)
