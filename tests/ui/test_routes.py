"""The web UI's routes, in process (no browser): where the page is, what it costs, who may load it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx

from sdgate.server.app import create_app
from sdgate.server.ui import STATIC_DIR
from sdgate.settings import Settings
from tests.fakes import FakeEngine


@asynccontextmanager
async def client(tmp_path: Path, **settings: object) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(Settings(data_dir=tmp_path / "data", device="cpu", **settings), engine=FakeEngine())
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://sdgate") as c:
            yield c


async def test_root_redirects_to_the_page_and_its_files_are_served(tmp_path: Path) -> None:
    async with client(tmp_path) as c:
        root = await c.get("/")
        assert root.status_code == 307 and root.headers["location"] == "/ui"
        page = await c.get("/ui")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert page.headers["cache-control"] == "no-cache"
        for name in ("app.js", "api.js", "controlnet.js", "png.js", "mask.js", "views.js", "style.css"):
            asset = await c.get(f"/ui/assets/{name}")
            assert asset.status_code == 200, name
            assert asset.headers["cache-control"] == "no-cache" and asset.headers["etag"]
            again = await c.get(f"/ui/assets/{name}", headers={"If-None-Match": asset.headers["etag"]})
            assert again.status_code == 304
        assert "/ui" not in (await c.get("/openapi.json")).json()["paths"]


async def test_the_page_uses_no_network_but_the_server(tmp_path: Path) -> None:
    for path in STATIC_DIR.rglob("*"):
        if path.is_file():
            text = path.read_text()
            assert "http://" not in text and "https://" not in text and "//cdn" not in text, path


async def test_no_ui_leaves_root_a_404(tmp_path: Path) -> None:
    async with client(tmp_path, ui=False) as c:
        assert (await c.get("/")).status_code == 404
        assert (await c.get("/ui")).status_code == 404
        assert (await c.get("/ui/assets/app.js")).status_code == 404


async def test_with_keys_on_the_page_loads_and_the_api_does_not(tmp_path: Path) -> None:
    async with client(tmp_path, auth="keys") as c:
        assert (await c.get("/ui")).status_code == 200
        assert (await c.get("/ui/assets/app.js")).status_code == 200
        assert (await c.get("/")).status_code == 307
        assert (await c.get("/api/v1/models")).status_code == 401
        assert (await c.get("/ui/assets/missing.js")).status_code == 401  # only the page's own files are open
