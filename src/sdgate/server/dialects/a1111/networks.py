"""``/sdapi/v1`` lists of extra networks and styles: LoRAs, embeddings, prompt styles.

A1111 serves ``/loras`` and ``/refresh-loras`` without auth; here every route is behind the same
auth as the rest (stricter on purpose). Files are listed from disk on each call, so the refresh
routes have nothing to rebuild and return ``null`` at once.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from sdgate.core.loras import list_loras
from sdgate.core.styles import STYLES_FILE, load_styles
from sdgate.server.deps import ServicesDep
from sdgate.server.dialects.a1111.router import A1111Route

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
def embeddings(services: ServicesDep) -> dict[str, dict[str, Any]]:
    """Textual-inversion files are found but not used by prompts yet: all are ``skipped``."""
    skipped = {
        f.name: {
            "step": None,
            "sd_checkpoint": None,
            "sd_checkpoint_name": None,
            "shape": None,
            "vectors": None,
        }
        for f in services.catalog.list_files("embeddings")
    }
    return {"loaded": {}, "skipped": skipped}


@router.post("/refresh-embeddings")
def refresh_embeddings() -> None:
    return None


@router.get("/prompt-styles")
def prompt_styles(services: ServicesDep) -> list[dict[str, str]]:
    styles = load_styles(services.settings.data_dir / STYLES_FILE)
    return [
        {"name": s.name, "prompt": s.prompt, "negative_prompt": s.negative_prompt} for s in styles.values()
    ]
