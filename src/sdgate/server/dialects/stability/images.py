"""Image plumbing the Stability, OpenAI and HF dialects share: uploads kept with their alpha,
stored PNGs re-encoded to what a client asked for.

It lives here, not in ``core.images``, only because this change may touch no other file; it
belongs beside ``core.images`` (or in ``server/``) once the lead moves it.
"""

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
