"""The web UI: one static page at ``/ui`` (``/`` redirects there), plain ES modules and CSS under
``server/static/ui``, no build step and nothing from a CDN.

The page holds no data: it calls the native API (``/api/v1``) and follows its event streams like
any other client, with the API key the user typed in (kept in the browser's ``localStorage``). So
the page and its files are answered without credentials (``public_paths``); every call it makes is
authenticated as usual. ``--no-ui`` leaves all of this out, and ``/`` stays a 404.

Files are revalidated on every load (``Cache-Control: no-cache`` with the ETag StaticFiles sends):
an upgraded server never runs an old script, and an unchanged file costs a 304.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from starlette.responses import Response
from starlette.types import Scope

STATIC_DIR = Path(__file__).resolve().parent.parent / "static" / "ui"
PAGE = "/ui"
ASSETS = "/ui/assets"
_REVALIDATE = {"Cache-Control": "no-cache"}


class _Assets(StaticFiles):
    async def get_response(self, path: str, scope: Scope) -> Response:
        response = await super().get_response(path, scope)
        if response.status_code in (200, 304):
            response.headers.update(_REVALIDATE)
        return response


def public_paths() -> list[str]:
    """The paths answered without credentials: the redirect, the page and each of its files."""
    files = sorted(p.relative_to(STATIC_DIR).as_posix() for p in STATIC_DIR.rglob("*") if p.is_file())
    return ["/", PAGE, *(f"{ASSETS}/{name}" for name in files if name != "index.html")]


def assets() -> StaticFiles:
    """The page's scripts and styles, mounted at ``ASSETS``."""
    return _Assets(directory=STATIC_DIR)


router = APIRouter(include_in_schema=False)


@router.get("/")
async def root(request: Request) -> RedirectResponse:
    return RedirectResponse(request.scope.get("root_path", "") + PAGE, status_code=307)


@router.get(PAGE)
async def page() -> FileResponse:
    return FileResponse(STATIC_DIR / "index.html", media_type="text/html", headers=_REVALIDATE)
