"""``sdgate``: one typer app composed of one sub-app per command group.

Exit codes: 0 ok, 1 API/network/runtime error, 2 usage error. Errors go to stderr as one line,
``ErrorClass: message``, never a traceback.
"""

from __future__ import annotations

import json
import sys
from typing import Annotated

import typer

from sdgate import __version__
from sdgate.cli.serving import DataDirOpt, ModelOpt, ModelsDirOpt, build_settings
from sdgate.cli.serving import mount as mount_serving

app = typer.Typer(
    name="sdgate",
    help="A self-hosted Stable Diffusion server that speaks the APIs existing clients use.",
    no_args_is_help=True,
    add_completion=False,
)

mount_serving(app)  # serve, api, worker: first in --help


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
    from sdgate.cli.audit import mount as mount_audit
    from sdgate.cli.db import app as db_app
    from sdgate.cli.demo import app as demo_app
    from sdgate.cli.generate import mount as mount_client_commands
    from sdgate.cli.keys import app as keys_app

    app.add_typer(demo_app, name="demo", help="The built-in demo model: train and evaluate it.")
    app.add_typer(db_app, name="db", help="The job database: its schema migrations.")
    app.add_typer(keys_app, name="keys", help="API keys: create, list, revoke, rotate.")
    mount_client_commands(app)  # generate, batch, info and jobs: the SDK's commands
    mount_audit(app)  # audit: the server's audit log, read from its database


_mount_sub_apps()


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


