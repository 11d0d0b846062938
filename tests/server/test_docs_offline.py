"""/docs and /redoc load every script, stylesheet and icon from this server, none from a CDN."""

from __future__ import annotations

import re

import httpx
import pytest


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
async def test_docs_page_loads_only_local_assets(client: httpx.AsyncClient, page: str) -> None:
    r = await client.get(page)
    assert r.status_code == 200
    html = r.text
    refs = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert refs, html
    assert not [ref for ref in refs if "//" in ref], f"{page} still points off this server: {refs}"
    assert "fonts.googleapis" not in html
    kinds = {"js": "javascript", "css": "text/css", "png": "image/png"}
    for ref in refs:
        asset = await client.get(ref)
        assert asset.status_code == 200, ref
        assert kinds[ref.rsplit(".", 1)[-1]] in asset.headers["content-type"], ref
        assert len(asset.content) > 500, ref
    assert "/openapi.json" in html


async def test_swagger_oauth2_redirect_page_is_served(client: httpx.AsyncClient) -> None:
    r = await client.get("/docs/oauth2-redirect")
    assert r.status_code == 200 and "oauth2" in r.text.lower()


def test_vendored_assets_ship_with_their_licences() -> None:
    from sdgate.server.docs import STATIC_DIR

    names = {p.name for p in STATIC_DIR.iterdir()}
    assert {"LICENSE.swagger-ui", "NOTICE.swagger-ui", "LICENSE.redoc", "README.md"} <= names
