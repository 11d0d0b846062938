"""Textual-inversion embeddings from the models folder's ``embeddings/``, as prompts use them.

Files are loaded safely: ``.safetensors`` with safetensors, ``.pt`` / ``.bin`` with
``torch.load(weights_only=True)``, which refuses any pickle that names a class outside torch's
tensor allow-list, so a hostile file runs no code; it is skipped with its reason. Loaded files are
kept by (path, mtime, size), so a file added or replaced is seen on the next job without a refresh.

An embedding is written in a prompt by its file stem. ``EmbeddingSet`` is what one model can use:
the files whose widths equal its text encoders' (SDXL files carry ``clip_l`` and ``clip_g``);
the others are skipped, as A1111's ``/embeddings`` lists them. Matching is on token ids, as in
A1111: the name is tokenized and looked for, longest first, in each weighted run's tokens.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from sdgate.core.embeddings import BadEmbedding, check_vectors, select_vectors
from sdgate.core.models import ModelCatalog, compute_sha256

log = logging.getLogger("sdgate.engine")


@dataclass(frozen=True)
class Embedding:
    name: str
    vectors: tuple[torch.Tensor, ...]  # (n, width) per text encoder: one, or SDXL's clip_l, clip_g
    sha256: str
    step: int | None = None

    @property
    def count(self) -> int:
        return int(self.vectors[0].shape[0])

    @property
    def widths(self) -> tuple[int, ...]:
        return tuple(int(v.shape[1]) for v in self.vectors)

    @property
    def shorthash(self) -> str:
        """A1111's TI hash: the first 12 hex digits of the file's sha256."""
        return self.sha256[:12]


def load_file(name: str, path: Path) -> Embedding:
    """One embedding file -> its vectors (float32, CPU). Raises ``BadEmbedding`` for anything else."""
    try:
        if path.suffix.lower() == ".safetensors":
            from safetensors.torch import load_file as load_safetensors

            data: Any = load_safetensors(str(path), device="cpu")
        else:
            data = torch.load(path, map_location="cpu", weights_only=True)
    except BadEmbedding:
        raise
    except Exception as exc:  # noqa: BLE001 - any unreadable or refused file is just skipped
        first_line = (str(exc).strip().splitlines() or [""])[0][:200]
        raise BadEmbedding(f"unreadable: {type(exc).__name__}: {first_line}") from exc
    tensors = tuple(
        t.detach().float().reshape(1, -1) if t.dim() == 1 else t.detach().float()
        for t in select_vectors(data, lambda v: isinstance(v, torch.Tensor))
    )
    check_vectors(tuple(tuple(t.shape) for t in tensors))
    step = data.get("step") if isinstance(data, dict) else None
    step = step if isinstance(step, int) and not isinstance(step, bool) else None
    return Embedding(name, tensors, compute_sha256(path), step)


_lock = threading.Lock()
_loaded: dict[Path, tuple[tuple[float, int], Embedding | str]] = {}  # path -> (fingerprint, result)


def _load_cached(name: str, path: Path) -> Embedding | str:
    """The embedding, or why it was skipped; a file is read again only when it changed."""
    try:
        stat = path.stat()
    except OSError as exc:
        return f"unreadable: {exc}"
    key = (stat.st_mtime, stat.st_size)
    with _lock:
        cached = _loaded.get(path)
        if cached is not None and cached[0] == key:
            return cached[1]
    try:
        result: Embedding | str = load_file(name, path)
    except BadEmbedding as exc:
        log.warning("skipping embedding %s: %s", path, exc)
        result = str(exc)
    with _lock:
        _loaded[path] = (key, result)
    return result


@dataclass
class EmbeddingSet:
    """The embeddings one model can use, by name, and a token-id index per tokenizer."""

    loaded: dict[str, Embedding] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)  # name -> why
    _index: dict[int, dict[int, list[tuple[list[int], Embedding]]]] = field(default_factory=dict, repr=False)

    def index(self, tokenizer: Any) -> dict[int, list[tuple[list[int], Embedding]]]:
        """first token id -> [(the name's token ids, embedding)], longest first."""
        key = id(tokenizer)
        if key not in self._index:
            lookup: dict[int, list[tuple[list[int], Embedding]]] = {}
            for name, embedding in self.loaded.items():
                ids = tokenizer(name, add_special_tokens=False, truncation=False).input_ids
                if ids:
                    lookup.setdefault(ids[0], []).append((ids, embedding))
            for entries in lookup.values():
                entries.sort(key=lambda entry: -len(entry[0]))
            self._index[key] = lookup
        return self._index[key]

    def find(self, tokenizer: Any, tokens: list[int], at: int) -> tuple[Embedding, int] | None:
        """The embedding whose name starts at ``tokens[at]``, and how many tokens the name takes."""
        if not self.loaded:
            return None
        for ids, embedding in self.index(tokenizer).get(tokens[at], ()):
            if tokens[at : at + len(ids)] == ids:
                return embedding, len(ids)
        return None


def pipeline_widths(pipe: Any) -> tuple[int, ...]:
    """The widths of ``pipe``'s text encoders' token embeddings (te, then te2 for SDXL)."""
    widths = []
    for attr in ("text_encoder", "text_encoder_2"):
        encoder = getattr(pipe, attr, None)
        if encoder is not None:
            widths.append(int(encoder.get_input_embeddings().weight.shape[1]))
    return tuple(widths)


def for_model(catalog: ModelCatalog | None, widths: tuple[int, ...]) -> EmbeddingSet:
    """The models folder's embeddings, split into what fits text encoders of ``widths`` and not."""
    found = EmbeddingSet()
    if catalog is None:
        return found
    for asset in catalog.list_files("embeddings"):
        if asset.name in found.loaded or asset.name in found.skipped:
            continue  # A1111 keeps the first file of a name
        result = _load_cached(asset.name, asset.path)
        if isinstance(result, str):
            found.skipped[asset.name] = result
        elif result.widths != widths:
            found.skipped[asset.name] = (
                f"width {list(result.widths)} does not match the model's {list(widths)}"
            )
        else:
            found.loaded[asset.name] = result
    return found


def for_pipeline(catalog: ModelCatalog | None, pipe: Any) -> EmbeddingSet:
    return for_model(catalog, pipeline_widths(pipe))
