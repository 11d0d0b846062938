"""Hostile images at ``/sdapi/v1/img2img``: every one is a 4xx naming its field, and the server goes on."""

from __future__ import annotations

import base64
import io
import struct
import zlib
from typing import Any

import httpx
import pytest
from PIL import Image

from tests.fakes import FakeEngine


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims ``width`` x ``height`` (its pixels would never be decoded)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", ihdr)
        + _chunk(b"IDAT", zlib.compress(b""))
        + _chunk(b"IEND", b"")
    )


def gif_with_frames(count: int) -> bytes:
    frame = b"," + struct.pack("<HHHHB", 0, 0, 1, 1, 0) + b"\x02\x02\x44\x01\x00"
    head = b"GIF89a" + struct.pack("<HHBBB", 1, 1, 0x80, 0, 0) + b"\x00\x00\x00\xff\xff\xff"
    return head + frame * count + b";"


def truncated_jpeg() -> bytes:
    buf = io.BytesIO()
    Image.effect_noise((256, 256), 64).convert("RGB").save(buf, format="JPEG", quality=95)
    return buf.getvalue()[: len(buf.getvalue()) // 2]


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


HOSTILE: dict[str, Any] = {
    "20000x20000 png": lambda: b64(png_header_only(20000, 20000)),
    "1-pixel-wide png": lambda: b64(png_header_only(1, 30000)),
    "gif with 10000 frames": lambda: b64(gif_with_frames(10000)),
    "truncated jpeg": lambda: b64(truncated_jpeg()),
    "not an image": lambda: b64(b"hello, this is not an image at all" * 10),
    "huge base64": lambda: "A" * (70 * 1024 * 1024),
}


def small_png() -> str:
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 10, 10)).save(buf, format="PNG")
    return b64(buf.getvalue())


@pytest.mark.parametrize("where", ["init_images.0", "mask"])
@pytest.mark.parametrize("name", list(HOSTILE))
async def test_hostile_images_are_refused(
    client: httpx.AsyncClient, engine: FakeEngine, name: str, where: str
) -> None:
    bad = HOSTILE[name]()
    body: dict[str, Any] = {
        "prompt": "x",
        "steps": 2,
        "width": 64,
        "height": 64,
        "init_images": [small_png()],
    }
    if where == "mask":
        body["mask"] = bad
    else:
        body["init_images"] = [bad]
    r = await client.post("/sdapi/v1/img2img", json=body)
    assert 400 <= r.status_code < 500, (r.status_code, r.text[:300])
    if name == "huge base64":  # refused by the body limit before any JSON is parsed
        assert r.status_code == 413
    else:
        assert where in r.json()["detail"]
    # The server still serves.
    ok = await client.post("/sdapi/v1/img2img", json={**body, "init_images": [small_png()], "mask": None})
    assert ok.status_code == 200, ok.text


# -- image URLs (off unless allow_image_urls; never to loopback / private addresses) -----------------


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/x.png",
        "http://localhost/x.png",
        "http://10.1.2.3/x.png",
        "http://169.254.169.254/latest/meta-data",
        "http://[::1]/x.png",
        "http://[::ffff:192.168.0.1]/x.png",
        "http://0.0.0.0/x.png",
        "ftp://example.com/x.png",
        "http://user:pw@example.com/x.png",
    ],
)
def test_fetch_refuses_internal_addresses(url: str) -> None:
    from sdgate.server import fetch

    def resolve(host: str, port: int) -> list[str]:
        return ["127.0.0.1"] if host == "localhost" else ["93.184.215.14"]

    with pytest.raises(ValueError):
        fetch.fetch_image(url, 1000, resolve=resolve)


def test_fetch_checks_every_resolved_address() -> None:
    from sdgate.server import fetch

    assert fetch.checked_address("https://example.com/a.png", resolve=lambda h, p: ["93.184.215.14"])[3] == (
        "93.184.215.14"
    )
    with pytest.raises(ValueError, match="private"):  # one private answer is enough to refuse
        fetch.checked_address("https://example.com/a.png", resolve=lambda h, p: ["93.184.215.14", "10.0.0.1"])


async def test_urls_are_refused_unless_enabled(client: httpx.AsyncClient) -> None:
    from sdgate.server.fetch import make_fetcher
    from sdgate.settings import Settings

    assert make_fetcher(Settings(), "mask") is None
    assert make_fetcher(Settings(allow_image_urls=True), "mask") is not None
    body = {
        "prompt": "x",
        "steps": 2,
        "width": 64,
        "height": 64,
        "init_images": ["https://example.com/a.png"],
    }
    r = await client.post("/sdapi/v1/img2img", json=body)
    assert (
        r.status_code == 400 and "init_images.0" in r.json()["detail"] and "not enabled" in r.json()["detail"]
    )
