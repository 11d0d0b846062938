"""LoRA files under the models folder (``Lora/``, ``loras/``): names, aliases, metadata. No torch.

A1111 names a LoRA by its alias (the safetensors metadata's ``ss_output_name``) or its file stem;
``/sdapi/v1/loras`` lists both with the whole metadata dict. A prompt asks for one with a
``<lora:name:weight>`` (or ``<lyco:...>``) tag.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from sdgate.core.models import ModelCatalog
from sdgate.core.prompts import extract_networks

LORA_KINDS = ("lora", "lyco")  # the extra-network tags that name a LoRA


@dataclass(frozen=True)
class LoraFile:
    name: str  # file stem
    alias: str  # ss_output_name from the metadata, else the stem
    path: Path
    metadata: dict[str, str]


def read_metadata(path: Path) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors header ({} for other files or a bad header)."""
    if path.suffix.lower() != ".safetensors":
        return {}
    try:
        with path.open("rb") as fh:
            size = int.from_bytes(fh.read(8), "little")
            if not 0 < size < 100_000_000:
                return {}
            header = json.loads(fh.read(size))
    except (OSError, ValueError):
        return {}
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    return {str(k): str(v) for k, v in meta.items()} if isinstance(meta, dict) else {}


def list_loras(catalog: ModelCatalog) -> list[LoraFile]:
    out = []
    for asset in catalog.list_files("lora"):
        meta = read_metadata(asset.path)
        out.append(LoraFile(asset.name, meta.get("ss_output_name") or asset.name, asset.path, meta))
    return out


def find_lora(loras: list[LoraFile], name: str) -> LoraFile | None:
    """By alias or file stem, as A1111 (exact first, then case-insensitive)."""
    exact = [f for f in loras if name in (f.alias, f.name)]
    folded = [f for f in loras if name.casefold() in (f.alias.casefold(), f.name.casefold())]
    return (exact or folded)[0] if exact or folded else None


def prompt_lora_names(prompt: str) -> list[str]:
    """The LoRA names a prompt's ``<lora:...>`` / ``<lyco:...>`` tags ask for, in order."""
    _, networks = extract_networks(prompt)
    return [n.name for n in networks if n.kind in LORA_KINDS and n.name]
