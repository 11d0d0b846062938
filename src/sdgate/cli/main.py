"""``sdgate``: one typer app composed of one sub-app per command group.

Exit codes: 0 ok, 1 API/network/runtime error, 2 usage error. Errors go to stderr as one line,
``ErrorClass: message``, never a traceback.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError
from rich.console import Console

from sdgate import __version__
from sdgate.settings import DEFAULT_PORT, Settings, load_settings

app = typer.Typer(
    name="sdgate",
    help="A self-hosted Stable Diffusion server that speaks the APIs existing clients use.",
    no_args_is_help=True,
    add_completion=False,
)
err_console = Console(stderr=True)

DataDirOpt = Annotated[
    Path | None, typer.Option("--data-dir", help="Jobs database, images and state. [env: SDGATE_DATA_DIR]")
]
ModelsDirOpt = Annotated[
    Path | None,
    typer.Option("--models-dir", help="A1111 or ComfyUI models folder. [default: <data-dir>/models]"),
]
ModelOpt = Annotated[
    Path | None, typer.Option("--model", help="One checkpoint: .safetensors/.ckpt file or diffusers folder.")
]


def fail(message: str, *, code: int = 1, kind: str = "Error") -> typer.Exit:
    err_console.print(f"[red]{kind}[/red]: {message}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


def build_settings(**overrides: object) -> Settings:
    try:
        return load_settings(**overrides)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"])
        raise fail(f"{field}: {first['msg']}", code=2, kind="UsageError") from None


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Address to bind. [default: 127.0.0.1]")] = None,
    port: Annotated[int | None, typer.Option(help=f"Port. [default: {DEFAULT_PORT}]")] = None,
    listen: Annotated[bool, typer.Option("--listen", help="Bind 0.0.0.0 (all interfaces).")] = False,
    data_dir: DataDirOpt = None,
    models_dir: ModelsDirOpt = None,
    model: ModelOpt = None,
    database: Annotated[
        str | None,
        typer.Option(help="sqlite:///path/sdgate.db or postgresql://user:pass@host/db. "
                     "[default: <data-dir>/sdgate.db]"),
    ] = None,
    storage: Annotated[
        str | None,
        typer.Option(help="Images: a folder, or s3://bucket/prefix (credentials and region from the "
                     "standard AWS variables and files). [default: <data-dir>/images]"),
    ] = None,
    storage_endpoint: Annotated[
        str | None,
        typer.Option("--storage-endpoint", help="s3:// storage on an S3-compatible server (MinIO, "
                     "SeaweedFS, ...): its URL. [default: AWS_ENDPOINT_URL, else AWS]"),
    ] = None,
    device: Annotated[str | None, typer.Option(help="auto, cpu, cuda, cuda:N or mps.")] = None,
    engine: Annotated[
        str | None, typer.Option(help="diffusers, or null (blank images at once, for benchmarks).")
    ] = None,
    api_auth: Annotated[
        str | None, typer.Option("--api-auth", help="user:pass[,user2:pass2]: HTTP Basic on every route.")
    ] = None,
    public_url: Annotated[
        str | None, typer.Option("--public-url", help="Base URL for absolute links in responses.")
    ] = None,
    lowvram: Annotated[
        bool, typer.Option("--lowvram", help="CUDA: sequential CPU offload, sliced attention and VAE.")
    ] = False,
    medvram: Annotated[
        bool, typer.Option("--medvram", help="CUDA: model CPU offload, sliced attention and VAE.")
    ] = False,
    allow_image_urls: Annotated[
        bool, typer.Option("--allow-image-urls", help="Accept http(s) URLs (public hosts) as img2img images.")
    ] = False,
    workers: Annotated[
        int | None,
        typer.Option(min=0, help="Worker threads (one per device); 0: API only, another process on the "
                     "same --data-dir runs the jobs. [default: 1]"),
    ] = None,
    max_queued_per_principal: Annotated[
        int | None,
        typer.Option(min=1, help="Jobs each --api-auth user (without it: everyone together) may have "
                     "queued or running at once; more is a 429. [default: no limit]"),
    ] = None,
    log_level: Annotated[str, typer.Option(help="debug, info, warning, error.")] = "info",
) -> None:
    """Run the server: the AUTOMATIC1111 API on one port, jobs in a durable queue."""
    settings = build_settings(
        host="0.0.0.0" if listen else host,
        port=port,
        data_dir=data_dir,
        models_dir=models_dir,
        model=model,
        database=database,
        storage=storage,
        storage_endpoint=storage_endpoint,
        device=device,
        engine=engine,
        api_auth=api_auth,
        public_url=public_url,
        vram_mode="lowvram" if lowvram else "medvram" if medvram else None,
        allow_image_urls=True if allow_image_urls else None,
        workers=workers,
        max_queued_per_principal=max_queued_per_principal,
    )
    try:
        settings.auth_pairs()
    except ValueError as exc:
        raise fail(f"--api-auth: {exc}", code=2, kind="UsageError") from None
    if settings.model is not None and not settings.model.exists():
        raise fail(f"--model: {settings.model} does not exist", code=2, kind="UsageError")
    from sdgate.jobs.storage import data_dir_problem

    storage_problem = data_dir_problem(settings.data_dir, settings.database_url)
    if storage_problem is not None:  # before serving: a server that cannot write would fail every submit
        raise fail(storage_problem, code=1, kind="StorageUnavailable")
    _check_stores(settings)
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)  # one line per migration plugin otherwise

    import uvicorn

    from sdgate.core.errors import ModelNotFound
    from sdgate.core.models import ModelCatalog
    from sdgate.server.app import create_app

    catalog = ModelCatalog(settings)
    try:
        default = catalog.resolve(None)
        model_line = f"model: {default.title} ({default.filename})"
    except ModelNotFound:
        if settings.engine != "null":
            raise fail(
                f"no model found in {settings.resolved_models_dir} and no built-in model; "
                "pass --model PATH or --models-dir DIR",
                code=2,
                kind="UsageError",
            ) from None
        model_line = "model: none (null engine)"
    typer.echo(f"sdgate {__version__}: engine {settings.engine} on {settings.device}; {model_line}")
    typer.echo(f"data: {settings.data_dir.resolve()}; models: {settings.resolved_models_dir.resolve()}")
    if settings.workers == 0:
        typer.echo("workers: none (API only: jobs run on the workers of another process on this data dir)")
    config = uvicorn.Config(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=log_level.lower(),
        timeout_keep_alive=30,
        timeout_graceful_shutdown=5,  # open event streams must not hold a shutdown for minutes
    )
    server = uvicorn.Server(config)
    threading.Thread(target=_announce_when_listening, args=(server, settings), daemon=True).start()
    server.run()
    if not server.started:  # the port was taken, or start-up failed: uvicorn has logged why
        raise typer.Exit(1)


def _check_stores(settings: Settings) -> None:
    """A database URL sdgate cannot use, or object storage that does not answer: one line and exit,
    before serving (the app would only fail inside its start-up)."""
    from sdgate.core.errors import StorageUnavailable
    from sdgate.jobs.factory import StoreLocationError, check_database_url, image_store

    try:
        check_database_url(settings.database_url)
        if settings.storage is not None:
            image_store(settings.storage, endpoint=settings.storage_endpoint)
    except StoreLocationError as exc:
        raise fail(f"--{exc}", code=2, kind="UsageError") from None
    except StorageUnavailable as exc:
        raise fail(exc.message, code=1, kind="StorageUnavailable") from None


def _announce_when_listening(server: object, settings: Settings) -> None:
    """Print the URL once the port accepts connections (not before: a user who pastes the next
    line at once must not get "connection refused"), then one line to try."""
    while not getattr(server, "started", False):
        if getattr(server, "should_exit", False):
            return
        time.sleep(0.05)
    shown = "127.0.0.1" if settings.host in ("0.0.0.0", "::") else settings.host
    url = f"http://{shown}:{settings.port}"
    typer.echo(f"listening on {url} (A1111 API at /sdapi/v1, job API at /api/v1, docs at /docs)")
    base = "" if settings.port == DEFAULT_PORT and shown == "127.0.0.1" else f"SDGATE_BASE_URL={url} "
    typer.echo(f'try: {base}sdgate generate "a red circle on a blue background" -o out')


@app.command()
def models(
    data_dir: DataDirOpt = None,
    models_dir: ModelsDirOpt = None,
    model: ModelOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
) -> None:
    """List the checkpoints the server would offer (A1111 and ComfyUI layouts, and --model)."""
    from sdgate.core.models import ModelCatalog

    settings = build_settings(data_dir=data_dir, models_dir=models_dir, model=model)
    catalog = ModelCatalog(settings)
    items = catalog.list()
    try:
        default_name: str | None = catalog.resolve(None).name
    except Exception:  # noqa: BLE001 - an empty catalog simply has no default
        default_name = None
    if as_json:
        rows = [
            {"name": m.name, "title": m.title, "filename": str(m.filename), "format": m.format,
             "family": m.family, "default": m.name == default_name}
            for m in items
        ]
        typer.echo(json.dumps(rows, indent=2))
        return
    if not items:
        typer.echo(f"no models in {settings.resolved_models_dir}")
        return
    for m in items:
        mark = "*" if m.name == default_name else " "
        typer.echo(f"{mark} {m.name:40s} {m.family or '?':5s} {m.format:12s} {m.filename}")


@app.command()
def version() -> None:
    """Print the version."""
    typer.echo(__version__)


def _mount_sub_apps() -> None:
    from sdgate.cli.db import app as db_app
    from sdgate.cli.demo import app as demo_app
    from sdgate.cli.generate import mount as mount_client_commands

    app.add_typer(demo_app, name="demo", help="The built-in demo model: train and evaluate it.")
    app.add_typer(db_app, name="db", help="The job database: its schema migrations.")
    mount_client_commands(app)  # generate, batch, info and jobs: the SDK's commands


_mount_sub_apps()


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


