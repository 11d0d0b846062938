"""``sdgate generate``: one prompt in, images on disk. The flags and plumbing it shares with the
other client commands live in ``cli/common.py``.

Exit codes: 0 ok, 1 API or network error, 2 usage. Errors go to stderr as one line.
"""

from __future__ import annotations

import json
import re
import time
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
    err_console,
    fail,
    handle_errors,
    on_event,
    progress_bar,
    request_options,
    result_json,
)
from sdgate.client._constants import DEFAULT_MAX_RETRIES

# -- the command ------------------------------------------------------------------------------------


@request_options
def generate(
    prompt: Annotated[str, typer.Argument(help="What to draw.")],
    fields: dict[str, Any],  # the request flags (request_options)
    init: Annotated[
        Path | None, typer.Option("--init", exists=True, dir_okay=False, help="Init image (img2img).")
    ] = None,
    strength: Annotated[
        float | None, typer.Option("--strength", min=0.0, max=1.0, help="Denoising strength.")
    ] = None,
    mask: Annotated[
        Path | None,
        typer.Option("--mask", exists=True, dir_okay=False, help="Mask (white = repaint); needs --init."),
    ] = None,
    out: Annotated[Path, typer.Option("-o", "--out", file_okay=False, help="Output folder.")] = Path("."),
    backend: BackendOpt = None,
    api_key: ApiKeyOpt = None,
    retries: RetriesOpt = DEFAULT_MAX_RETRIES,
    timeout: TimeoutOpt = 600.0,
    as_json: JsonOpt = False,
) -> None:
    """Generate images from a prompt and save them (PNG, with the infotext)."""
    if mask is not None and init is None:
        fail("--mask needs --init (the image to repaint)", code=2, kind="UsageError")
    if strength is not None:
        fields = {**fields, "denoising_strength": strength}
    with handle_errors():
        from sdgate.client import ImageRequest

        request = ImageRequest.build(prompt, init_image=init, mask=mask, **fields)
        options = ClientOptions(backend, api_key, retries, timeout)
        with common.make_client(options) as client, progress_bar(not as_json, "queued") as update:
            result = client.generate(request, on_progress=on_event(update))
        prefix = result.job_id or f"sdgate-{time.strftime('%Y%m%d-%H%M%S')}"
        paths = result.save(out, prefix=_safe(prefix))
    if result.ignored_fields:
        err_console.print(
            f"note: {result.backend} ignored: {', '.join(result.ignored_fields)}", highlight=False
        )
    if as_json:
        typer.echo(json.dumps(result_json(result, paths), indent=2))
    else:
        for path, s in zip(paths, result.seeds, strict=False):
            typer.echo(f"{path}" + (f"  seed {s}" if s is not None else ""))


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def mount(app: typer.Typer) -> None:
    """Add the client commands to the ``sdgate`` app: generate, batch, info, status and the jobs group."""
    from sdgate.cli import batch, info, jobs, status

    app.command("generate")(generate)
    app.command("batch")(batch.batch)
    app.command("info")(info.info)
    app.command("status")(status.status)
    app.add_typer(
        jobs.app,
        name="jobs",
        help="List, inspect, cancel, retry, delete and follow jobs on an sdgate server.",
    )
