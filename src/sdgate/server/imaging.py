"""Client images that several dialects share: uploads read with their alpha kept, stored PNGs
re-encoded to what a client asked for, and stand-in image ids for checking a request before any of
its images is decoded or stored (so a refused request leaves nothing behind)."""

from __future__ import annotations

import io
from typing import Literal

from PIL import Image, ImageOps

from sdgate.core import images as core_images


def read_upload(
    data: bytes, *, field: str, limits: core_images.ImageLimits
) -> tuple[Image.Image, Image.Image | None]:
    """(the image flattened to RGB, its alpha channel or None when it has no transparency).

    The hardened decoder checks the bytes first; only an image that carries alpha is opened a
    second time, to keep the channel the decoder flattens away.
    """
    rgb = core_images.decode_image_bytes(data, field=field, limits=limits)
    with Image.open(io.BytesIO(data)) as probe:
        has_alpha = probe.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in probe.info
        if not has_alpha:
            return rgb, None
        upright = ImageOps.exif_transpose(probe) or probe
        alpha = upright.convert("RGBA").getchannel("A")
    return rgb, None if alpha.getextrema() == (255, 255) else alpha


def to_png(image: Image.Image) -> bytes:
    return core_images.encode_png(image)


def reencode(png: bytes, fmt: str, quality: int = 80) -> bytes:
    """A stored PNG in ``fmt`` (png, jpeg, webp), keeping its infotext."""
    if fmt == "png":
        return png
    image = Image.open(io.BytesIO(png))
    infotext = image.info.get("parameters")
    kind: Literal["JPEG", "WEBP"] = "JPEG" if fmt == "jpeg" else "WEBP"
    return core_images.encode_image(image.convert("RGB"), infotext, format=kind, quality=quality)


def resize(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    return image.convert("RGB").resize(size, Image.Resampling.LANCZOS)


# Not an image: a well-formed id that only a request's cheap checks see, which read no image.
STAND_IN_ID = "img_" + "0" * 24


def stand_ins(images: int, *, mask: bool) -> tuple[tuple[str, ...], str | None]:
    """(init image ids, mask id) to translate a request with before its images are stored: each
    dialect checks everything cheap first, then decodes and stores, then translates again."""
    return (STAND_IN_ID,) * images, STAND_IN_ID if mask else None
