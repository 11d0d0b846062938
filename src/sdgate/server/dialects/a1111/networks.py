"""``/sdapi/v1`` lists of extra networks and styles: LoRAs, embeddings, prompt styles.

Embeddings are described from their headers (no torch here); which ones are ``loaded`` depends on
the current checkpoint's text-encoder widths, read the same way.

A1111 serves ``/loras`` and ``/refresh-loras`` without auth; here every route is behind the same
auth as the rest (stricter on purpose). Files are listed from disk on each call, so the refresh
routes have nothing to rebuild and return ``null`` at once.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from sdgate.core.embeddings import EmbeddingFile, describe, text_widths
from sdgate.core.errors import SdgateError
from sdgate.core.loras import list_loras
from sdgate.core.styles import STYLES_FILE, load_styles
from sdgate.server.deps import ServicesDep
from sdgate.server.dialects.a1111.router import A1111Route, OptionsDep

router = APIRouter(prefix="/sdapi/v1", route_class=A1111Route, tags=["AUTOMATIC1111"])


@router.get("/loras")
def loras(services: ServicesDep) -> list[dict[str, Any]]:
    return [
        {"name": f.name, "alias": f.alias, "path": str(f.path), "metadata": f.metadata}
        for f in list_loras(services.catalog)
    ]


@router.post("/refresh-loras")
def refresh_loras() -> None:
    return None


@router.get("/embeddings")
def embeddings(services: ServicesDep, options: OptionsDep) -> dict[str, dict[str, Any]]:
    """The embeddings folder, split as A1111 does for the current checkpoint: ``loaded`` are those
    whose width fits its text encoders, ``skipped`` the others (and files that cannot be read)."""
    try:
        widths = text_widths(options.current_model())
    except SdgateError:  # no model at all: nothing can be said to fit
        widths = None
    loaded: dict[str, Any] = {}
    skipped: dict[str, Any] = {}
    for asset in services.catalog.list_files("embeddings"):
        if asset.name in loaded or asset.name in skipped:
            continue  # the first file of a name wins, as in prompts
        found = describe(asset.name, asset.path)
        fits = found.error is None and widths is not None and found.widths == widths
        (loaded if fits else skipped)[asset.name] = _embedding_item(found)
    return {"loaded": loaded, "skipped": skipped}


def _embedding_item(found: EmbeddingFile) -> dict[str, Any]:
    return {
        "step": found.step,
        "sd_checkpoint": found.sd_checkpoint,
        "sd_checkpoint_name": found.sd_checkpoint_name,
        "shape": found.shape if found.error is None else None,
        "vectors": found.vectors if found.error is None else None,
    }


@router.post("/refresh-embeddings")
def refresh_embeddings() -> None:
    return None


@router.get("/prompt-styles")
def prompt_styles(services: ServicesDep) -> list[dict[str, str]]:
    styles = load_styles(services.settings.data_dir / STYLES_FILE)
    return [
        {"name": s.name, "prompt": s.prompt, "negative_prompt": s.negative_prompt} for s in styles.values()
    ]
