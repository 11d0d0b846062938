"""Textual-inversion files, understood without torch: which formats hold which vectors, and widths.

The formats A1111 reads, and how each one's vectors are found:

- A1111 ``.pt``: ``{"string_to_param": {"*": tensor(n, width)}, "step", "sd_checkpoint", ...}``;
- ``emb_params``: A1111's own ``.safetensors`` (and some trainers' ``.pt``);
- diffusers ``learned_embeds.bin`` / ``.safetensors``: ``{token: tensor(width)}``, one entry;
- SDXL: ``{"clip_l": tensor(n, 768), "clip_g": tensor(n, 1280)}``.

``select_vectors`` works on any mapping whose tensors are either real tensors (the engine) or
shapes (``describe``, for ``/embeddings`` in a process without torch). An embedding fits a model
when its widths equal the model's text encoders' widths (one for SD 1.x / 2.x, two for SDXL).
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from sdgate.core.models import (
    ModelInfo,
    _ShapeUnpickler,
    is_diffusers_folder,
    read_ckpt_shapes,
    read_safetensors_shapes,
)

MAX_VECTORS = 75  # an embedding must fit one 75-token chunk
MAX_FILE_BYTES = 64 * 1024 * 1024  # far above any real embedding; a bigger file is not one

T = TypeVar("T")


class BadEmbedding(ValueError):
    """The file is not a textual-inversion embedding this server can read."""


def select_vectors(data: object, is_tensor: Callable[[object], bool]) -> tuple[Any, ...]:
    """The vector tensors of one embedding file's contents: ``(vectors,)`` or, for SDXL,
    ``(clip_l, clip_g)``. Raises ``BadEmbedding`` for anything else."""
    if is_tensor(data):
        return (data,)
    if not isinstance(data, Mapping):
        raise BadEmbedding("not a mapping of tensors")
    params = data.get("string_to_param")
    if isinstance(params, Mapping):
        tensors = [v for v in params.values() if is_tensor(v)]
        if len(tensors) != 1:
            raise BadEmbedding("string_to_param must hold exactly one tensor")
        return (tensors[0],)
    if is_tensor(data.get("clip_l")) and is_tensor(data.get("clip_g")):
        return (data["clip_l"], data["clip_g"])
    if is_tensor(data.get("emb_params")):
        return (data["emb_params"],)
    tensors = [v for v in data.values() if is_tensor(v)]
    if len(tensors) == 1:
        return (tensors[0],)
    raise BadEmbedding("no recognisable embedding vectors (string_to_param, emb_params, clip_l/clip_g)")


def vector_shape(shape: tuple[int, ...]) -> tuple[int, int]:
    """(vectors, width) of a tensor shape: ``(width,)`` is one vector."""
    if len(shape) == 1:
        shape = (1, *shape)
    if len(shape) != 2 or shape[0] < 1 or shape[1] < 1:
        raise BadEmbedding(f"embedding vectors must be (n, width), got {list(shape)}")
    if shape[0] > MAX_VECTORS:
        raise BadEmbedding(f"{shape[0]} vectors do not fit a {MAX_VECTORS}-token chunk")
    return shape[0], shape[1]


def check_vectors(shapes: tuple[tuple[int, ...], ...]) -> tuple[int, tuple[int, ...]]:
    """(vectors, widths) of one embedding; SDXL's two tensors must agree on the count."""
    pairs = [vector_shape(s) for s in shapes]
    counts = {n for n, _ in pairs}
    if len(counts) != 1:
        raise BadEmbedding("clip_l and clip_g hold different numbers of vectors")
    return pairs[0][0], tuple(w for _, w in pairs)


@dataclass(frozen=True)
class EmbeddingFile:
    """What ``/embeddings`` shows of one file, read without torch."""

    name: str
    path: Path
    vectors: int = 0
    widths: tuple[int, ...] = ()
    step: int | None = None
    sd_checkpoint: str | None = None
    sd_checkpoint_name: str | None = None
    error: str | None = None

    @property
    def shape(self) -> int:
        """A1111's ``shape``: the width, summed over SDXL's two encoders."""
        return sum(self.widths)


def describe(name: str, path: Path) -> EmbeddingFile:
    """Read an embedding's vector count, widths and training metadata from its header or pickle."""
    try:
        if path.stat().st_size > MAX_FILE_BYTES:
            raise BadEmbedding("file too large for an embedding")
        if path.suffix.lower() == ".safetensors":
            data: Any = read_safetensors_shapes(path)
        else:
            data = _read_pickle(path)
        is_shape = _is_shape
        vectors, widths = check_vectors(tuple(select_vectors(data, is_shape)))
    except (BadEmbedding, OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        return EmbeddingFile(name, path, error=str(exc) or type(exc).__name__)
    except Exception as exc:  # noqa: BLE001 - a hostile pickle may raise anything; never crash a listing
        return EmbeddingFile(name, path, error=f"unreadable: {type(exc).__name__}")
    meta = data if isinstance(data, Mapping) else {}
    return EmbeddingFile(
        name,
        path,
        vectors,
        widths,
        step=_int_or_none(meta.get("step")),
        sd_checkpoint=_str_or_none(meta.get("sd_checkpoint")),
        sd_checkpoint_name=_str_or_none(meta.get("sd_checkpoint_name")),
    )


def _read_pickle(path: Path) -> object:
    """A torch zip pickle with tensors replaced by shapes; no class it names is ever imported."""
    with zipfile.ZipFile(path) as zf:
        pkl = next((n for n in zf.namelist() if n.endswith("/data.pkl") or n == "data.pkl"), None)
        if pkl is None:
            raise BadEmbedding("not a torch zip file")
        return _ShapeUnpickler(zf.open(pkl)).load()


def _is_shape(value: object) -> bool:
    return isinstance(value, tuple) and all(isinstance(v, int) for v in value)


def _int_or_none(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _str_or_none(value: object) -> str | None:
    return value if isinstance(value, str) else None


# --- the model side ------------------------------------------------------------------------------


def text_widths(info: ModelInfo) -> tuple[int, ...] | None:
    """Widths of a checkpoint's text encoders (token embedding size), read from shapes or configs;
    None when they cannot be read."""
    path = info.filename
    try:
        if is_diffusers_folder(path):
            widths = []
            for folder in ("text_encoder", "text_encoder_2"):
                config = path / folder / "config.json"
                if config.is_file():
                    widths.append(int(json.loads(config.read_text(encoding="utf-8"))["hidden_size"]))
            return tuple(widths) or None
        if path.suffix.lower() == ".safetensors":
            shapes = read_safetensors_shapes(path)
        else:
            shapes = read_ckpt_shapes(path)
    except (OSError, ValueError, KeyError, zipfile.BadZipFile):
        return None
    keys = sorted(k for k in shapes if k.endswith("token_embedding.weight") and len(shapes[k]) == 2)
    return tuple(shapes[k][1] for k in keys) or None
