"""ComfyUI's files: uploads (``/upload/image``, ``/upload/mask``) into the image store under a
per-principal (type, subfolder, name), and ``/view`` of the caller's uploads and outputs.

Nothing here touches a file system path: a file is a row (``jobs/comfy_files.py``) naming a stored
image, or an output name that names a job of the caller (``translate.parse_output_name``), so no
name can reach another folder. Names are still checked as ComfyUI checks paths, with its statuses:
a ``filename`` starting with ``/`` or holding ``..`` is a 400, a ``subfolder`` that would leave the
folder a 403, a file that is not there (or not the caller's) a 404.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from typing import Any

from PIL import Image

from sdgate.core import images as core_images
from sdgate.core.errors import Forbidden, InvalidRequest, NotFound
from sdgate.core.jobs import JobStore
from sdgate.jobs.comfy_files import ComfyFiles
from sdgate.server.auth import Principal
from sdgate.server.dialects.comfy import translate
from sdgate.server.dialects.comfy.protocol import IMAGE_TYPES

MAX_NAME = 200
_STORED_AS = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp", "GIF": "image/gif"}
_MEDIA = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".webp": "image/webp",
          ".gif": "image/gif"}


@dataclass(frozen=True)
class FileRef:
    name: str
    subfolder: str
    type: str


def image_type(value: str | None, *, default: str) -> str:
    kind = (value or default).strip() or default
    if kind not in IMAGE_TYPES:
        raise InvalidRequest(f"type: one of {', '.join(IMAGE_TYPES)}, not {kind[:40]!r}", field="type")
    return kind


def clean_subfolder(value: str | None, *, status_403: bool = False) -> str:
    """A subfolder as stored: "/"-separated, no empty, ``.`` or ``..`` part; one that would leave
    the folder is a 403 for ``/view`` (ComfyUI's answer) and a 400 elsewhere."""
    raw = (value or "").replace("\\", "/").strip()
    parts = [p for p in raw.split("/") if p not in ("", ".")]
    if raw.startswith("/") or ".." in parts or "\x00" in raw or len(raw) > 255:
        if status_403:
            raise Forbidden("subfolder: outside the folder")
        raise InvalidRequest("subfolder: must stay inside the folder", field="subfolder")
    return "/".join(parts)


def clean_name(value: str | None, *, field: str) -> str:
    name = (value or "").strip()
    if not name or name in (".", "..") or any(c in name for c in "/\\\x00") or name.startswith(".."):
        raise InvalidRequest(f"{field}: a plain file name is needed", field=field)
    if len(name) > MAX_NAME:
        raise InvalidRequest(f"{field}: at most {MAX_NAME} characters", field=field)
    return name


def split_annotation(filename: str) -> tuple[str, str | None]:
    """``"x.png [output]"`` -> ("x.png", "output")."""
    for kind in IMAGE_TYPES:
        suffix = f" [{kind}]"
        if filename.endswith(suffix):
            return filename[: -len(suffix)], kind
    return filename, None


def split_input_name(value: str) -> tuple[str, str]:
    """LoadImage's ``image`` value ("sub/x.png", "x.png [input]") as (subfolder, name)."""
    value, _ = split_annotation(value)
    value = value.replace("\\", "/")
    if "/" in value:
        subfolder, name = value.rsplit("/", 1)
        return subfolder, name
    return "", value


# -- uploads -----------------------------------------------------------------------------------------


def stored_bytes(
    data: bytes, limits: core_images.ImageLimits, *, field: str
) -> tuple[bytes, str, tuple[int, int]]:
    """(bytes to store, content type, size): the upload itself when the store keeps its format, else
    its pixels as PNG; ``InvalidRequest`` for what is not a decodable image within the limits."""
    image = core_images.decode_image_bytes(data, field=field, limits=limits)
    try:
        with Image.open(io.BytesIO(data)) as probe:
            fmt = probe.format
    except Exception:
        fmt = None
    content_type = _STORED_AS.get(fmt or "")
    if content_type is None:
        return core_images.encode_png(image), "image/png", image.size
    return data, content_type, image.size


def mask_onto(original: bytes, mask: bytes, limits: core_images.ImageLimits) -> tuple[bytes, tuple[int, int]]:
    """ComfyUI's ``/upload/mask``: the original with the mask's alpha channel, as PNG (text kept)."""
    core_images.decode_image_bytes(mask, field="image", limits=limits)
    with Image.open(io.BytesIO(original)) as opened:
        opened.load()
        info = {k: v for k, v in opened.info.items() if isinstance(v, str)}
        base = opened.convert("RGBA")
    with Image.open(io.BytesIO(mask)) as opened_mask:
        alpha = opened_mask.convert("RGBA").getchannel("A")
    if alpha.size != base.size:
        alpha = alpha.resize(base.size, Image.Resampling.LANCZOS)
    base.putalpha(alpha)
    from PIL import PngImagePlugin

    text = PngImagePlugin.PngInfo()
    for key, value in info.items():
        text.add_text(key, value)
    out = io.BytesIO()
    base.save(out, format="PNG", pnginfo=text)
    return out.getvalue(), base.size


def original_ref(value: str | None) -> FileRef:
    """``/upload/mask``'s ``original_ref``: JSON ``{filename, subfolder, type}`` (type: output)."""
    try:
        data = json.loads(value or "")
    except ValueError:
        raise InvalidRequest("original_ref: JSON {filename, subfolder, type} is needed",
                             field="original_ref") from None
    if not isinstance(data, dict) or not isinstance(data.get("filename"), str):
        raise InvalidRequest("original_ref: JSON {filename, subfolder, type} is needed", field="original_ref")
    subfolder = data.get("subfolder")
    return FileRef(
        name=clean_name(data["filename"], field="original_ref.filename"),
        subfolder=clean_subfolder(subfolder if isinstance(subfolder, str) else ""),
        type=image_type(data.get("type") if isinstance(data.get("type"), str) else None, default="output"),
    )


# -- finding a file -----------------------------------------------------------------------------------


def find_image(files: ComfyFiles, store: JobStore, principal: Principal, ref: FileRef) -> str:
    """The image id of the caller's file ``ref``: an upload of theirs, or an output of one of their
    jobs. ``NotFound`` otherwise (another principal's file is not found either)."""
    uploaded = files.find(principal.id, ref.type, ref.subfolder, ref.name)
    if uploaded is not None:
        return uploaded
    if ref.type in ("output", "temp"):
        parsed = translate.parse_output_name(ref.name)
        if parsed is not None:
            job_id, index = parsed
            try:
                job = store.get(job_id)
            except NotFound:
                job = None
            if job is not None and principal.owns(job.owner) and job.result is not None:
                for output in translate.node_outputs(job).values():
                    for image in output["images"]:
                        if (image["filename"], image["subfolder"], image["type"]) == (
                            ref.name, ref.subfolder, ref.type
                        ):
                            return job.result.images[index].id
    raise NotFound(f"{ref.type}/{ref.subfolder + '/' if ref.subfolder else ''}{ref.name} not found")


def view_ref(filename: str | None, subfolder: str | None, kind: str | None) -> FileRef:
    """``/view``'s query as a file reference, with ComfyUI's statuses for bad names."""
    raw = filename or ""
    if not raw:
        raise InvalidRequest("filename: required", field="filename")
    name, annotated = split_annotation(raw)
    if name.startswith("/") or ".." in name or "\\" in name or "\x00" in name:
        raise InvalidRequest("filename: a plain file name is needed", field="filename")
    sub = clean_subfolder(subfolder, status_403=True)
    if "/" in name:  # "sub/x.png": ComfyUI joins it to the subfolder
        more, name = name.rsplit("/", 1)
        sub = clean_subfolder(f"{sub}/{more}" if sub else more, status_403=True)
    if not name:
        raise InvalidRequest("filename: a plain file name is needed", field="filename")
    return FileRef(name=name, subfolder=sub, type=image_type(annotated or kind, default="output"))


def render(data: bytes, name: str, *, preview: str | None, channel: str | None) -> tuple[bytes, str]:
    """(bytes, media type) of a file as ``/view`` serves it: as stored, or one channel, or
    re-encoded (``preview=webp;90``, ``jpeg;85``)."""
    channel = (channel or "rgba").lower()
    if channel not in ("rgba", "rgb", "a"):
        raise InvalidRequest("channel: one of rgba, rgb, a", field="channel")
    if preview:
        fmt, _, quality_text = preview.partition(";")
        fmt = fmt.strip().lower()
        if fmt not in ("webp", "jpeg"):
            raise InvalidRequest("preview: webp;<quality> or jpeg;<quality>", field="preview")
        try:
            quality = int(quality_text) if quality_text.strip() else 90
        except ValueError:
            raise InvalidRequest("preview: the quality is a number", field="preview") from None
        quality = max(1, min(100, quality))
        with Image.open(io.BytesIO(data)) as opened:
            image = opened.convert("RGB") if fmt == "jpeg" or channel == "rgb" else opened.convert("RGBA")
            out = io.BytesIO()
            image.save(out, format="JPEG" if fmt == "jpeg" else "WEBP", quality=quality)
        return out.getvalue(), f"image/{fmt}"
    if channel == "rgba":
        suffix = "." + name.rsplit(".", 1)[-1].lower() if "." in name else ""
        return data, _MEDIA.get(suffix, _sniff(data))
    with Image.open(io.BytesIO(data)) as opened:
        if channel == "rgb":
            image = opened.convert("RGB")
        else:
            alpha = opened.convert("RGBA").getchannel("A")
            image = Image.new("RGBA", opened.size)
            image.putalpha(alpha)
        out = io.BytesIO()
        image.save(out, format="PNG")
    return out.getvalue(), "image/png"


def _sniff(data: bytes) -> str:
    try:
        with Image.open(io.BytesIO(data)) as probe:
            return _STORED_AS.get(probe.format or "", "application/octet-stream")
    except Exception:
        return "application/octet-stream"


def disposition(name: str) -> dict[str, Any]:
    safe = "".join(c if 32 <= ord(c) < 127 and c not in '"\\' else "_" for c in name)
    return {"Content-Disposition": f'filename="{safe}"'}
