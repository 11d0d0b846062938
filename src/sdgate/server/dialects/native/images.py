"""Client images in (uploads, init images, masks) and stored images out (format conversion).

Every client image is validated by ``core.images`` before anything is stored. An upload keeps its
original bytes (stored once by content hash; the upload's id is the image id). A job's inputs are
stored normalized, as the PNG the engine will read (transparency flattened for init images, the
alpha channel taken as the mask for masks), so the worker reads exactly what was checked here.
"""

from __future__ import annotations

import io
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from PIL import Image

from sdgate.core import images as core_images
from sdgate.core.errors import NotFound
from sdgate.jobs.images import ImageStore

UPLOAD_ID = re.compile(r"img_[0-9a-f]{24}")
# Pillow format -> what the image store keeps it as; other formats are stored re-encoded as PNG.
_STORED_AS = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp", "GIF": "image/gif"}
OutputFormat = Literal["png", "jpeg", "webp"]
MEDIA_TYPES: dict[str, str] = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}


@dataclass(frozen=True)
class StoredUpload:
    id: str
    content_type: str
    width: int
    height: int
    size: int


def store_upload(images: ImageStore, data: bytes, *, limits: core_images.ImageLimits,
                 field: str = "file") -> StoredUpload:
    image = core_images.decode_image_bytes(data, field=field, limits=limits)
    fmt = _format_of(data)
    content_type = _STORED_AS.get(fmt or "")
    if content_type is None:  # BMP and the like: keep the decoded pixels as PNG
        data, content_type = core_images.encode_png(image), "image/png"
    image_id = images.put(data, content_type=content_type)
    return StoredUpload(image_id, content_type, image.width, image.height, len(data))


def _format_of(data: bytes) -> str | None:
    try:
        with Image.open(io.BytesIO(data)) as probe:
            return probe.format
    except Exception:
        return None


def store_job_input(images: ImageStore, value: str, *, field: str, limits: core_images.ImageLimits,
                    mode: Literal["RGB", "L"], visible: Callable[[str], bool]) -> str:
    """A job's init image or mask (base64, ``data:`` URI, or an upload id) as the id of the
    normalized PNG the engine will read. An id ``visible`` refuses (another caller's image) is the
    same 404 as an id the store does not have."""
    image = read_input(images, value, field=field, limits=limits, mode=mode, visible=visible)
    return images.put(core_images.encode_png(image), content_type="image/png")


def read_input(images: ImageStore, value: str, *, field: str, limits: core_images.ImageLimits,
               mode: Literal["RGB", "L"], visible: Callable[[str], bool]) -> Image.Image:
    """The image ``value`` gives (base64, ``data:`` URI, or an upload id ``visible`` allows),
    decoded and bounded, stored nowhere."""
    if UPLOAD_ID.fullmatch(value.strip()):
        image_id = value.strip()
        try:
            if not visible(image_id):
                raise NotFound(image_id)
            data = images.get(image_id)
        except NotFound:
            raise NotFound(f"{field}: no upload {image_id}", field=field) from None
    else:
        data = core_images.decode_base64_bytes(value, field=field, limits=limits)
    return core_images.decode_image_bytes(data, field=field, limits=limits, mode=mode)


def convert(data: bytes, *, to: OutputFormat, quality: int) -> bytes:
    """A stored image in another format, keeping its infotext."""
    with Image.open(io.BytesIO(data)) as opened:
        opened.load()
        infotext, _ = core_images.read_image_info(opened)
        fmt: Literal["PNG", "JPEG", "WEBP"] = "PNG" if to == "png" else "JPEG" if to == "jpeg" else "WEBP"
        image: Image.Image = opened
        if image.mode not in ("RGB", "RGBA", "L"):
            image = image.convert("RGBA" if "A" in image.getbands() else "RGB")
        return core_images.encode_image(image, infotext or None, format=fmt, quality=quality)


def preview_data_uri(image: Image.Image, *, max_side: int = 128) -> str:
    """A small WEBP of a live preview, as a ``data:`` URI for an event."""
    import base64

    small = image.copy()
    small.thumbnail((max_side, max_side))
    if small.mode not in ("RGB", "L"):
        small = small.convert("RGB")
    out = io.BytesIO()
    small.save(out, format="WEBP", quality=60)
    return "data:image/webp;base64," + base64.b64encode(out.getvalue()).decode("ascii")
