"""``sdgate jobs list|show|cancel|retry|delete|watch|events``: the native job API from the command
line."""

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
    handle_errors,
    on_event,
    progress_bar,
    result_json,
)
from sdgate.client import Job

app = typer.Typer(
    help="List, inspect, cancel, retry, delete and follow jobs on an sdgate server.",
    no_args_is_help=True,
    add_completion=False,
)
JobIdArg = Annotated[str, typer.Argument(help="A job id (job_...).")]


def job_json(job: Job) -> dict[str, Any]:
    return job.raw or {"id": job.id, "state": job.state}


def job_line(job: Job) -> str:
    prompt = str((job.request or {}).get("prompt", ""))
    progress = f" {job.progress.step}/{job.progress.total}" if job.progress and job.progress.total else ""
    return f"{job.id}  {job.state:<9}{progress}  {prompt[:60]}"


@app.command("list")
def list_jobs(
    state: Annotated[
        str | None, typer.Option("--state", help="queued, running, succeeded, failed, cancelled.")
    ] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, help="At most this many.")] = 20,
    backend: BackendOpt = None,
    api_key: ApiKeyOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """List jobs, newest first."""
    with handle_errors(), common.make_client(ClientOptions(backend, api_key)) as client:
        jobs = client.jobs.list(state=state, limit=limit)
    if as_json:
        typer.echo(json.dumps([job_json(j) for j in jobs], indent=2, default=str))
        return
    for job in jobs:
        typer.echo(job_line(job))


@app.command()
def show(
    job_id: JobIdArg, backend: BackendOpt = None, api_key: ApiKeyOpt = None, as_json: JsonOpt = False
) -> None:
    """Show one job."""
    with handle_errors(), common.make_client(ClientOptions(backend, api_key)) as client:
        job = client.jobs.get(job_id)
    if as_json:
        typer.echo(json.dumps(job_json(job), indent=2, default=str))
        return
    typer.echo(job_line(job))
    if job.error:
        typer.echo(f"error: {job.error.get('code')}: {job.error.get('message')}")
    for image in (job.result or {}).get("images", []):
        typer.echo(f"image {image.get('id')}  seed {image.get('seed')}  {image.get('url')}")


@app.command()
def cancel(
    job_id: JobIdArg, backend: BackendOpt = None, api_key: ApiKeyOpt = None, as_json: JsonOpt = False
) -> None:
    """Cancel a job (a queued one never runs; a running one stops at its next step)."""
    with handle_errors(), common.make_client(ClientOptions(backend, api_key)) as client:
        job = client.jobs.cancel(job_id)
    _echo_job(job, as_json)


def _echo_job(job: Job, as_json: bool) -> None:
    typer.echo(json.dumps(job_json(job), indent=2, default=str) if as_json else job_line(job))


@app.command()
def retry(
    job_id: JobIdArg, backend: BackendOpt = None, api_key: ApiKeyOpt = None, as_json: JsonOpt = False
) -> None:
    """Run an ended job again as a new job (same request and seeds); prints the new job."""
    with handle_errors(), common.make_client(ClientOptions(backend, api_key)) as client:
        job = client.jobs.retry(job_id)
    _echo_job(job, as_json)


@app.command()
def delete(job_id: JobIdArg, backend: BackendOpt = None, api_key: ApiKeyOpt = None) -> None:
    """Delete a job and the images only it used (a running job is cancelled first)."""
    with handle_errors(), common.make_client(ClientOptions(backend, api_key)) as client:
        client.jobs.delete(job_id)
    typer.echo(f"{job_id} deleted")


@app.command()
def events(
    count: Annotated[
        int | None, typer.Option("--count", min=1, help="Stop after this many events. [default: never]")
    ] = None,
    backend: BackendOpt = None,
    api_key: ApiKeyOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Print every event of your jobs as it happens (one line each) until Ctrl-C."""
    with handle_errors(), common.make_client(ClientOptions(backend, api_key)) as client:
        stream = client.jobs.events()
        try:
            for seen, event in enumerate(stream, start=1):
                if as_json:
                    typer.echo(json.dumps({"event": event.kind, "job_id": event.job_id, "data": event.data}))
                else:
                    progress = f" {event.step}/{event.total}" if event.total else ""
                    typer.echo(f"{event.job_id}  {event.kind}{progress}")
                if count is not None and seen >= count:
                    break
        finally:
            stream.close()  # type: ignore[attr-defined]


@app.command()
def watch(
    job_id: JobIdArg,
    out: Annotated[
        Path | None, typer.Option("-o", "--out", file_okay=False, help="Save the images here.")
    ] = None,
    backend: BackendOpt = None,
    api_key: ApiKeyOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Follow a job's progress to the end; exit 1 if it failed or was cancelled."""
    with handle_errors(), common.make_client(ClientOptions(backend, api_key)) as client:
        with progress_bar(not as_json, "waiting") as update:
            job = client.jobs.wait(job_id, on_progress=on_event(update))
        if out is not None or job.state != "succeeded":
            result = client.jobs.result(job)  # raises JobFailedError for failed/cancelled: exit 1
            paths = result.save(out, prefix=job.id) if out is not None else []
            if as_json:
                typer.echo(json.dumps(result_json(result, paths), indent=2))
                return
            for path in paths:
                typer.echo(str(path))
    if as_json and out is None:
        typer.echo(json.dumps(job_json(job), indent=2, default=str))
    elif out is None:
        typer.echo(job_line(job))
