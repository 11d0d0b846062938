"""Uploads (validated, stored once) and image downloads in other formats; retention."""

from __future__ import annotations

import base64
import io
from datetime import UTC, datetime, timedelta

import httpx
from PIL import Image

from sdgate.core.images import read_png_info
from sdgate.jobs.retention import Retention
from tests.server.dialects.native.conftest import png_b64, serve, wait_state


async def test_uploads_are_validated_and_stored_once(api: httpx.AsyncClient) -> None:
    data = base64.b64decode(png_b64("green", (32, 48)))
    first = await api.post("/api/v1/uploads", content=data, headers={"content-type": "image/png"})
    second = await api.post("/api/v1/uploads", files={"file": ("g.png", data, "image/png")})
    assert first.status_code == second.status_code == 201
    assert first.json() == second.json()
    up = first.json()
    assert (up["width"], up["height"], up["content_type"]) == (32, 48, "image/png")
    assert (await api.get(up["url"])).content == data
    bad = await api.post("/api/v1/uploads", content=b"not an image")
    assert bad.status_code == 400 and bad.json()["error"]["field"] == "file"
    empty = await api.post("/api/v1/uploads", files={"other": ("x", b"")})
    assert empty.status_code == 400


async def test_images_convert_to_webp_and_jpeg_keeping_the_infotext(api: httpx.AsyncClient) -> None:
    body = {"prompt": "a cat", "steps": 1, "width": 64, "height": 64}
    job = (await api.post("/api/v1/jobs", json=body)).json()
    job = await wait_state(api, job["id"])
    url = job["result"]["images"][0]["url"]
    png = await api.get(url)
    assert png.headers["content-type"] == "image/png" and "immutable" in png.headers["cache-control"]
    assert read_png_info(png.content)[0].startswith("a cat")
    for fmt, media in (("webp", "image/webp"), ("jpeg", "image/jpeg")):
        r = await api.get(url, params={"format": fmt, "quality": 50})
        assert r.status_code == 200 and r.headers["content-type"] == media
        assert Image.open(io.BytesIO(r.content)).format == fmt.upper()
        assert read_png_info(r.content)[0].startswith("a cat")
    assert (await api.get(url, params={"format": "gif"})).status_code == 422
    assert (await api.get(url, params={"quality": 0, "format": "jpeg"})).status_code == 422
    assert (await api.get("/api/v1/images/img_nope")).status_code == 404
    assert (await api.get("/api/v1/images/..%2F..%2Fetc%2Fpasswd")).status_code == 404


async def test_public_url_makes_links_absolute(native_settings, engine) -> None:
    async with serve(native_settings, engine, public_url="https://sd.example.com/") as api:
        job = (await api.post("/api/v1/jobs", json={"prompt": "x", "steps": 1})).json()
        assert job["links"]["self"] == f"https://sd.example.com/api/v1/jobs/{job['id']}"
        job = await wait_state(api, job["id"])
        assert job["result"]["images"][0]["url"].startswith("https://sd.example.com/api/v1/images/img_")


async def test_retention_deletes_old_jobs_images_and_uploads(native_settings, engine) -> None:
    async with serve(native_settings, engine) as api:
        services = api.app.state.services  # type: ignore[attr-defined]
        job = (await api.post("/api/v1/jobs", json={"prompt": "x", "steps": 1, "seed": 77})).json()
        job = await wait_state(api, job["id"])
        up = await api.post("/api/v1/uploads", content=base64.b64decode(png_b64("navy")))
        assert up.status_code == 201, up.text
        upload = up.json()
        keep = Retention(services.store, services.images, ttl_s=3600)
        assert keep.run_once() == {"jobs": 0, "uploads": 0, "keys": 0, "usage": 0}
        later = datetime.now(UTC) + timedelta(hours=2)
        assert keep.run_once(now=later) == {"jobs": 1, "uploads": 1, "keys": 0, "usage": 0}
        assert (await api.get(f"/api/v1/jobs/{job['id']}")).status_code == 404
        assert (await api.get(job["result"]["images"][0]["url"])).status_code == 404
        assert (await api.get(upload["url"])).status_code == 404
