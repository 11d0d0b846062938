"""Image bytes in and out, shared by every dialect.

- ``decode_base64_image``: a client's base64 string or ``data:`` URI -> a loaded RGB (or "L") image,
  refusing oversized, hostile or broken input with ``InvalidRequest`` / ``PayloadTooLarge`` that
  name the request field. Every check that can run before pixels are decoded does.
- ``encode_png`` / ``encode_image`` / ``image_to_base64_png``: images with their infotext, stored
  where A1111 stores it (PNG text chunk ``parameters``; EXIF UserComment for JPEG and WEBP).
- ``read_png_info``: the infotext and other metadata back out, in A1111's reading order
  (``reference/a1111_api.md`` §4.2-4.3).
"""

from __future__ import annotations

import base64
import binascii
import io
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError
from PIL.PngImagePlugin import PngInfo

from sdgate.core.errors import InvalidRequest, PayloadTooLarge
from sdgate.core.samplers import find_sampler

DEFAULT_FORMATS: frozenset[str] = frozenset({"PNG", "JPEG", "WEBP", "GIF", "BMP"})

# image.info keys that A1111's /png-info leaves out of ``items``.
IGNORED_INFO_KEYS: frozenset[str] = frozenset(
    {
        "jfif", "jfif_version", "jfif_unit", "jfif_density", "dpi", "exif", "loop", "background",
        "timestamp", "duration", "progressive", "progression", "icc_profile", "chromaticity",
        "photoshop",
    }
)  # fmt: skip

_EXIF_IFD = 0x8769
_EXIF_USER_COMMENT = 0x9286
_EXIF_ORIENTATION = 0x0112
_USER_COMMENT_UNICODE = b"UNICODE\x00"
_USER_COMMENT_ASCII = b"ASCII\x00\x00\x00"
_USER_COMMENT_JIS = b"JIS\x00\x00\x00\x00\x00"
_USER_COMMENT_UNDEFINED = b"\x00" * 8
_JPEG_MAX_EXIF = 65_000  # one APP1 segment; a longer infotext is left out of a JPEG's EXIF
_WHITE = (255, 255, 255, 255)  # A1111's img2img_background_color: what transparency becomes
_DELETE_WHITESPACE = str.maketrans("", "", " \t\r\n\f\v")

# Fetches an http(s) image (the seam for A1111's ``api_enable_requests``): called with the URL and
# the most bytes wanted; the fetcher owns SSRF rules, timeouts and stopping early.
UrlFetcher = Callable[[str, int], bytes]


@dataclass(frozen=True)
class ImageLimits:
    """What one client image may be. ``max_bytes`` counts decoded bytes, not base64 characters."""

    max_bytes: int = 32 * 1024 * 1024
    max_pixels: int = 4096 * 4096
    max_side: int = 8192
    max_frames: int = 1000
    formats: frozenset[str] = DEFAULT_FORMATS  # Pillow format names


# -- decoding client images ------------------------------------------------------------------------


def decode_base64_image(
    value: str,
    *,
    field: str,
    limits: ImageLimits,
    mode: Literal["RGB", "L"] = "RGB",
    fetch_url: UrlFetcher | None = None,
) -> Image.Image:
    """A client's image (raw base64 or a ``data:image/...;base64,`` URI) as a loaded image.

    ``mode="RGB"`` flattens transparency onto white (A1111's init-image rule); ``mode="L"`` is for
    masks and, like A1111, takes the alpha channel as the mask when the image is not fully opaque.
    EXIF orientation is applied; of an animation, the first frame is used. http(s) URLs are
    refused unless ``fetch_url`` is given. Raises ``InvalidRequest`` (``PayloadTooLarge`` for too
    many bytes) naming ``field``.
    """
    data = decode_base64_bytes(value, field=field, limits=limits, fetch_url=fetch_url)
    return decode_image_bytes(data, field=field, limits=limits, mode=mode)


def decode_base64_bytes(
    value: str, *, field: str, limits: ImageLimits, fetch_url: UrlFetcher | None = None
) -> bytes:
    """The bytes of a base64 string or ``data:`` URI, checked for size before anything is decoded.

    Strict base64 (standard or URL-safe alphabet), tolerating whitespace and missing padding.
    """
    if not isinstance(value, str):
        raise InvalidRequest(f"{field} must be a base64-encoded image string", field=field)
    # Cheap bound first, before touching a possibly huge string: the most characters max_bytes
    # can take in base64, with room for line breaks and a data: header.
    max_chars = 4 * -(-limits.max_bytes // 3)
    if len(value) > max_chars + max_chars // 16 + 1024:
        raise _too_large(field, limits)
    text = value.strip()
    if not text:
        raise InvalidRequest(f"{field} is empty; expected a base64-encoded image", field=field)
    lowered = text[:8].lower()
    if lowered.startswith(("http://", "https://")):
        return _fetch(text, field=field, limits=limits, fetch_url=fetch_url)
    if lowered.startswith("data:"):
        header, comma, text = text.partition(",")
        if not comma or not header.lower().endswith(";base64"):
            raise InvalidRequest(f"{field}: a data URI must look like data:image/png;base64,...", field=field)

    text = text.translate(_DELETE_WHITESPACE).rstrip("=")
    if not text.isascii():
        raise InvalidRequest(f"{field} is not valid base64 (non-ASCII characters)", field=field)
    if len(text) % 4 == 1:
        raise InvalidRequest(f"{field} is not valid base64 (truncated)", field=field)
    if len(text) * 3 // 4 > limits.max_bytes:
        raise _too_large(field, limits)
    urlsafe = "-" in text or "_" in text
    try:
        if urlsafe and ("+" in text or "/" in text):
            raise binascii.Error("mixes the standard and URL-safe alphabets")
        data = base64.b64decode(
            text + "=" * (-len(text) % 4), altchars=b"-_" if urlsafe else None, validate=True
        )
    except binascii.Error as exc:
        raise InvalidRequest(f"{field} is not valid base64 ({exc})", field=field) from exc
    if not data:
        raise InvalidRequest(f"{field} is empty; expected a base64-encoded image", field=field)
    return data


def decode_image_bytes(
    data: bytes, *, field: str, limits: ImageLimits, mode: Literal["RGB", "L"] = "RGB"
) -> Image.Image:
    """Encoded image bytes as a loaded, normalized image (see ``decode_base64_image``)."""
    if len(data) > limits.max_bytes:
        raise _too_large(field, limits)
    image = _open(data, field=field, limits=limits)
    try:
        _check_size(image, field=field, limits=limits)
        _check_frames(image, data, field=field, limits=limits)
        try:
            image.load()
        except MemoryError:
            raise
        except Exception as exc:  # any decoder failure on client bytes is the client's bad input
            raise InvalidRequest(f"{field} is a corrupt or truncated image ({exc})", field=field) from exc
        return _normalize(image, mode=mode, field=field)
    finally:
        image.close()


def _open(data: bytes, *, field: str, limits: ImageLimits) -> ImageFile.ImageFile:
    """Identify the image without decoding pixels; only the allowed formats' plugins are tried.

    Pillow's own decompression-bomb check runs inside ``Image.open`` against the process-wide
    ``Image.MAX_IMAGE_PIXELS``, which we leave alone: its error (or its warning, where warnings
    are errors) is translated here, and our tighter ``limits.max_pixels`` is checked afterwards.
    """
    allowed = ", ".join(sorted(limits.formats))
    try:
        return Image.open(io.BytesIO(data), formats=sorted(limits.formats))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise InvalidRequest(
            f"{field} is too large: more than {limits.max_pixels} pixels", field=field
        ) from exc
    except UnidentifiedImageError as exc:
        message = f"{field} is not a valid image in an accepted format ({allowed})"
        raise InvalidRequest(message, field=field) from exc
    except MemoryError:
        raise
    except Exception as exc:
        raise InvalidRequest(f"{field} could not be read as an image ({exc})", field=field) from exc


def _check_size(image: Image.Image, *, field: str, limits: ImageLimits) -> None:
    width, height = image.size
    if width < 1 or height < 1:
        raise InvalidRequest(f"{field} has no pixels ({width}x{height})", field=field)
    if width > limits.max_side or height > limits.max_side:
        raise InvalidRequest(
            f"{field} is {width}x{height}; each side may be at most {limits.max_side}", field=field
        )
    if width * height > limits.max_pixels:
        raise InvalidRequest(
            f"{field} is {width}x{height}; at most {limits.max_pixels} pixels are accepted", field=field
        )


def _check_frames(image: Image.Image, data: bytes, *, field: str, limits: ImageLimits) -> None:
    if image.format == "GIF":
        if _count_gif_frames(data, stop_after=limits.max_frames) > limits.max_frames:
            raise InvalidRequest(
                f"{field} has more than {limits.max_frames} frames; at most {limits.max_frames} are accepted",
                field=field,
            )
        return
    frames = getattr(image, "n_frames", 1)
    if frames > limits.max_frames:
        raise InvalidRequest(
            f"{field} has {frames} frames; at most {limits.max_frames} are accepted", field=field
        )


def _count_gif_frames(data: bytes, *, stop_after: int) -> int:
    """Image descriptors in a GIF, walking its blocks the way Pillow does, but stopping once there
    are more than ``stop_after``: Pillow's ``n_frames`` would walk all of them (millions fit in a
    few MiB of tiny frames) before we could refuse."""
    end = len(data)
    if end < 13:
        return 0
    pos = 13
    if data[10] & 0x80:  # global colour table
        pos += 3 << ((data[10] & 7) + 1)
    frames = 0
    while pos < end:
        block = data[pos]
        if block == 0x3B:  # trailer
            break
        if block == 0x2C:  # image descriptor (+ local colour table) + LZW code size, then data
            frames += 1
            if frames > stop_after or pos + 10 > end:
                break
            flags = data[pos + 9]
            pos += 10 + ((3 << ((flags & 7) + 1)) if flags & 0x80 else 0) + 1
        elif block == 0x21:  # extension: label, then data
            pos += 2
        else:  # Pillow skips stray bytes one at a time
            pos += 1
            continue
        while pos < end:  # data sub-blocks, up to the zero-length terminator
            size = data[pos]
            pos += size + 1
            if size == 0:
                break
    return frames


def _normalize(image: Image.Image, *, mode: Literal["RGB", "L"], field: str) -> Image.Image:
    """A new, file-independent image in ``mode``, upright per its EXIF orientation."""
    try:
        if image.getexif().get(_EXIF_ORIENTATION, 1) in range(2, 9):
            image = ImageOps.exif_transpose(image)
    except MemoryError:
        raise
    except Exception:  # an unreadable EXIF block is not worth refusing the image for
        pass
    try:
        if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):  # 16-bit PNG grayscale
            image = image.convert("I").point(lambda v: v * (1 / 256)).convert("L")
        has_alpha = image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
            image.mode == "P" and "transparency" in image.info
        )
        if mode == "L":
            if has_alpha:
                alpha = image.convert("RGBA").getchannel("A")
                if alpha.getextrema() != (255, 255):
                    return alpha
            return image.convert("L")
        if has_alpha:
            flat = Image.new("RGBA", image.size, _WHITE)
            flat.alpha_composite(image.convert("RGBA"))
            return flat.convert("RGB")
        return image.convert("RGB")
    except ValueError as exc:  # a colour mode Pillow cannot convert
        raise InvalidRequest(f"{field} has an unsupported colour mode ({image.mode})", field=field) from exc


def _fetch(url: str, *, field: str, limits: ImageLimits, fetch_url: UrlFetcher | None) -> bytes:
    if fetch_url is None:
        raise InvalidRequest(
            f"{field}: image URLs are not enabled on this server; send base64 or a data: URI",
            field=field,
        )
    data = fetch_url(url, limits.max_bytes)
    if len(data) > limits.max_bytes:
        raise _too_large(field, limits)
    return data


def _too_large(field: str, limits: ImageLimits) -> PayloadTooLarge:
    return PayloadTooLarge(f"{field} is larger than {limits.max_bytes} bytes", field=field)


# -- encoding ---------------------------------------------------------------------------------------


def encode_png(
    image: Image.Image, infotext: str | None = None, *, extra_info: Mapping[str, str] | None = None
) -> bytes:
    """PNG bytes with ``infotext`` in the ``parameters`` text chunk (iTXt when not Latin-1), plus
    any ``extra_info`` text chunks."""
    pnginfo = PngInfo()
    texts = {**({"parameters": infotext} if infotext is not None else {}), **(extra_info or {})}
    for key, value in texts.items():
        pnginfo.add_text(key, value)
    out = io.BytesIO()
    image.save(out, format="PNG", pnginfo=pnginfo if texts else None)
    return out.getvalue()


def encode_image(
    image: Image.Image,
    infotext: str | None = None,
    *,
    format: Literal["PNG", "JPEG", "WEBP"] = "PNG",
    quality: int = 80,
) -> bytes:
    """Bytes in ``format``; JPEG and WEBP carry the infotext in EXIF UserComment (UTF-16), as
    A1111's ``samples_format`` jpg/webp do. ``quality`` defaults to A1111's ``jpeg_quality``."""
    fmt = format.upper()
    if fmt == "PNG":
        return encode_png(image, infotext)
    if fmt not in ("JPEG", "WEBP"):
        raise ValueError(f"cannot encode {format!r}; use PNG, JPEG or WEBP")
    if fmt == "JPEG" and image.mode not in ("RGB", "L"):
        image = image.convert("RGB")
    kwargs: dict[str, object] = {"quality": quality}
    if infotext is not None:
        comment = _USER_COMMENT_UNICODE + infotext.encode("utf-16-be")
        if fmt == "WEBP" or len(comment) < _JPEG_MAX_EXIF:
            exif = Image.Exif()
            exif.get_ifd(_EXIF_IFD)[_EXIF_USER_COMMENT] = comment
            # As bytes: some of Pillow's writers skip an Exif whose base IFD is empty.
            kwargs["exif"] = exif.tobytes()
    out = io.BytesIO()
    image.save(out, format=fmt, **kwargs)
    return out.getvalue()


def image_to_base64_png(image: Image.Image, infotext: str | None = None) -> str:
    """Raw base64 of the PNG (no ``data:`` prefix), as A1111 returns images."""
    return base64.b64encode(encode_png(image, infotext)).decode("ascii")


# -- reading metadata back ---------------------------------------------------------------------------


def read_png_info(
    data: bytes, *, field: str = "image", limits: ImageLimits | None = None
) -> tuple[str, dict[str, str]]:
    """``(infotext, other items)`` of encoded image bytes, for ``/png-info``.

    Despite the name, any accepted format works: PNG text chunks, EXIF UserComment (JPEG, WEBP,
    PNG eXIf) and GIF comments are read as ``read_image_info`` describes. Pixels are decoded only
    to reach PNG text chunks written after the image data, and only within ``limits``.
    """
    limits = limits or ImageLimits()
    if len(data) > limits.max_bytes:
        raise _too_large(field, limits)
    image = _open(data, field=field, limits=limits)
    try:
        if image.format == "PNG" and "parameters" not in image.info:
            try:
                _check_size(image, field=field, limits=limits)
                image.load()
            except MemoryError:
                raise
            except Exception:  # a broken or oversized image may still carry readable metadata
                pass
        return read_image_info(image)
    finally:
        image.close()


def read_image_info(image: Image.Image) -> tuple[str, dict[str, str]]:
    """A1111's ``read_info_from_image``: the infotext (``""`` when none) and the other items.

    Order: the ``parameters`` text; EXIF UserComment wins when present and non-empty; otherwise a
    GIF ``comment``; NovelAI PNGs are converted to A1111's format. Items leave out
    ``IGNORED_INFO_KEYS``; text values are kept (bytes decoded as UTF-8), numbers become strings,
    anything else (tuples and the like) is left out.
    """
    items: dict[Any, Any] = dict(image.info)  # Pillow's keys are mostly str, values anything
    infotext: object = items.pop("parameters", None)
    if "exif" in items:
        comment = _exif_user_comment(items["exif"])
        if comment:
            infotext = comment
    elif "comment" in items:
        comment_value = items["comment"]
        infotext = (
            comment_value.decode("utf-8", errors="ignore")
            if isinstance(comment_value, bytes)
            else comment_value
        )
    for key in IGNORED_INFO_KEYS:
        items.pop(key, None)
    if items.get("Software") == "NovelAI":
        infotext = _novelai_infotext(items, image.size) or infotext
    out: dict[str, str] = {}
    for key, value in items.items():
        if isinstance(value, bytes):
            out[str(key)] = value.decode("utf-8", errors="replace")
        elif isinstance(value, str | int | float):
            out[str(key)] = str(value)
    return (str(infotext) if infotext else ""), out


def decode_user_comment(raw: bytes) -> str:
    """An EXIF UserComment: an 8-byte charset header, then text (piexif's ``UserComment.load``).

    UNICODE is UTF-16, big-endian as piexif (and so A1111) writes it; a byte-order mark or a
    little-endian body (some writers) is recognised. Without a known header the bytes are read as
    UTF-8, as A1111 falls back to.
    """
    prefix, body = raw[:8], raw[8:]
    if prefix == _USER_COMMENT_UNICODE:
        text = _decode_utf16(body)
    elif prefix == _USER_COMMENT_ASCII:
        text = body.decode("ascii", errors="replace")
    elif prefix == _USER_COMMENT_JIS:
        text = body.decode("shift_jis", errors="replace")
    else:
        text = (body if prefix == _USER_COMMENT_UNDEFINED else raw).decode("utf-8", errors="ignore")
    return text.rstrip("\x00")


def _decode_utf16(body: bytes) -> str:
    if body.startswith((b"\xff\xfe", b"\xfe\xff")):
        return body.decode("utf-16", errors="replace")
    # Mostly-ASCII text has a zero high byte: first in big-endian pairs, second in little-endian.
    sample = body[:512]
    little = sample[1::2].count(0) > sample[0::2].count(0)
    return body.decode("utf-16-le" if little else "utf-16-be", errors="replace")


def _exif_user_comment(raw: object) -> str:
    if not isinstance(raw, bytes):
        return ""
    try:
        exif = Image.Exif()
        exif.load(raw)
        value = exif.get_ifd(_EXIF_IFD).get(_EXIF_USER_COMMENT)
    except MemoryError:
        raise
    except Exception:  # A1111 (piexif) also shrugs off unreadable EXIF
        return ""
    if isinstance(value, str):
        return value
    return decode_user_comment(value) if isinstance(value, bytes) else ""


def _novelai_infotext(items: Mapping[Any, Any], size: tuple[int, int]) -> str | None:
    try:
        info = json.loads(str(items["Comment"]))
        found = find_sampler(str(info["sampler"]))
        return (
            f"{items['Description']}\nNegative prompt: {info['uc']}\n"
            f"Steps: {info['steps']}, Sampler: {found.name if found else 'Euler a'}, "
            f"CFG scale: {info['scale']}, Seed: {info['seed']}, Size: {size[0]}x{size[1]}, "
            "Clip skip: 2, ENSD: 31337"
        )
    except (KeyError, TypeError, ValueError):
        return None
