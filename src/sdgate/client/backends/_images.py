"""Small pure image conversions some services need (mask polarity, aspect ratios)."""

from __future__ import annotations

import io

from PIL import Image, ImageOps

ASPECT_RATIOS = ("16:9", "1:1", "21:9", "2:3", "3:2", "4:5", "5:4", "9:16", "9:21")


def png(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def open_image(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def repaint_as_transparency(init_image: bytes, mask: bytes) -> bytes:
    """Our masks are A1111's (white = repaint); OpenAI and ComfyUI's LoadImage want the area to
    repaint fully transparent in the image itself. Returns that RGBA PNG."""
    image = open_image(init_image).convert("RGBA")
    m = open_image(mask).convert("L").resize(image.size)
    keep = ImageOps.invert(m).point(lambda v: 255 if v >= 128 else 0)
    image.putalpha(keep)
    return png(image)


def nearest_aspect_ratio(width: int | None, height: int | None) -> str | None:
    if not width or not height:
        return None

    def value(ratio: str) -> float:
        a, b = ratio.split(":")
        return int(a) / int(b)

    target = width / height
    return min(ASPECT_RATIOS, key=lambda r: abs(value(r) - target))
