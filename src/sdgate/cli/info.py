"""``sdgate info image.png``: the generation parameters stored in an image (A1111's infotext)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from sdgate.cli.common import JsonOpt, fail


def info(
    image: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="A PNG, JPEG or WEBP image.")],
    as_json: JsonOpt = False,
) -> None:
    """Print the prompt and parameters an image was made with."""
    from sdgate.core.errors import SdgateError as CoreError
    from sdgate.core.images import read_png_info
    from sdgate.core.infotext import parse_infotext

    try:
        infotext, items = read_png_info(image.read_bytes(), field=str(image))
    except CoreError as exc:
        fail(exc.message, code=1, kind="InvalidImage")
    except OSError as exc:
        fail(str(exc), code=1, kind=type(exc).__name__)
    if as_json:
        params = parse_infotext(infotext) if infotext else {}
        typer.echo(
            json.dumps({"infotext": infotext, "parameters": params, "items": items}, indent=2, default=str)
        )
        return
    if not infotext:
        fail(f"{image}: no generation parameters in this image", code=1, kind="NoInfotext")
    typer.echo(infotext)
