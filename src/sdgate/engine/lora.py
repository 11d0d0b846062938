"""LoRA: ``<lora:name:w>`` / ``<lora:name:te:unet>`` patched into a loaded pipeline's weights.

A1111's own approach rather than peft adapters (peft is not a dependency): each LoRA's
``up @ down * alpha / rank * weight`` is added to the Linear / Conv weight it targets, after the
original weight was backed up once. Between jobs the active set is compared with the asked one;
when it differs, every patched weight is restored from its backup and the new set is added, so
LoRAs are re-weighted or unloaded without reloading the base model, and weight 0 (or no LoRA)
gives the base model's exact weights back.

Two file layouts are read: kohya (``lora_unet_<module_with_underscores>.lora_down.weight``,
``lora_te_...`` / ``lora_te1_...``, SDXL's second text encoder ``lora_te2_...``, ``.alpha``) and
diffusers / peft (``unet.<module>.lora_A.weight``, ``text_encoder.<module>.lora.down.weight``,
``text_encoder_2....``). Keys naming no module of the model are counted and logged, not fatal: a
LoRA for another architecture changes nothing, visibly.

The infotext gets A1111's ``Lora hashes: "name: hash, ..."``: each LoRA as the prompt named it
(``:`` and ``,`` removed) with the first 12 hex digits of its "addnet hash", the sha256 of a
safetensors file's tensor data (everything after the JSON header: kohya's hash, unchanged by
metadata edits), or of the whole file for other formats.
"""

from __future__ import annotations

import hashlib
import logging
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from sdgate.core.loras import LORA_KINDS, find_lora, list_loras
from sdgate.core.models import ModelCatalog
from sdgate.core.prompts import ExtraNetwork, extract_networks
from sdgate.core.requests import GenerationRequest, LoraRef

log = logging.getLogger("sdgate.engine")


# --- which LoRAs a request asks for ------------------------------------------------------------


def lora_ref(network: ExtraNetwork) -> LoraRef | None:
    """``<lora:NAME[:TE[:UNET]]>`` or named ``te=`` / ``unet=``; unet defaults to te, te to 1."""
    if not network.name:
        return None
    try:
        te = float(network.named.get("te", network.positional[1] if len(network.positional) > 1 else 1.0))
        unet_default = network.positional[2] if len(network.positional) > 2 else te
        unet = float(network.named.get("unet", unet_default))
    except ValueError:
        return None
    return LoraRef(name=network.name, te_weight=te, unet_weight=unet)


def requested_loras(request: GenerationRequest) -> list[LoraRef]:
    """``request.loras`` and the prompt's ``<lora:...>`` / ``<lyco:...>`` tags, in that order."""
    _, networks = extract_networks(request.prompt)
    tagged = [lora_ref(n) for n in networks if n.kind in LORA_KINDS]
    return [*request.loras, *(ref for ref in tagged if ref is not None)]


# --- reading one file into (component, module, delta-factors) ------------------------------------


@dataclass(frozen=True)
class _Pair:
    component: str  # "unet", "text_encoder" or "text_encoder_2" (SDXL)
    module: str  # the module path, underscores for dots (kohya's spelling)
    up: torch.Tensor
    down: torch.Tensor
    alpha: float | None


def _split_key(key: str) -> tuple[str, str, str] | None:
    """(component, module with underscores, role) with role in up/down/alpha; None if not LoRA."""
    roles = {
        ".lora_up.weight": "up", ".lora_down.weight": "down", ".lora_B.weight": "up",
        ".lora_A.weight": "down", ".lora.up.weight": "up", ".lora.down.weight": "down", ".alpha": "alpha",
    }  # fmt: skip
    suffix = next((end for end in roles if key.endswith(end)), None)
    if suffix is None:
        return None
    stem, role = key[: -len(suffix)], roles[suffix]
    for prefix, component in (
        ("lora_unet_", "unet"), ("lora_te1_", "text_encoder"), ("lora_te2_", "text_encoder_2"),
        ("lora_te_", "text_encoder"), ("unet.", "unet"), ("text_encoder.", "text_encoder"),
        ("text_encoder_2.", "text_encoder_2"),
    ):  # fmt: skip
        if stem.startswith(prefix):
            module = stem[len(prefix) :].replace(".", "_")
            if component != "unet" and module.startswith("text_model_"):
                module = module[len("text_model_") :]
            return component, module, role
    return None


def read_pairs(state: dict[str, torch.Tensor]) -> tuple[list[_Pair], int]:
    """The LoRA pairs of a state dict, and how many keys were not understood."""
    parts: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    unknown = 0
    for key, tensor in state.items():
        split = _split_key(key)
        if split is None:
            unknown += 1
            continue
        component, module, role = split
        parts.setdefault((component, module), {})[role] = tensor
    pairs = []
    for (component, module), roles in parts.items():
        if "up" not in roles or "down" not in roles:
            unknown += len(roles)
            continue
        alpha = float(roles["alpha"].item()) if "alpha" in roles else None
        pairs.append(_Pair(component, module, roles["up"], roles["down"], alpha))
    return pairs, unknown


def _delta(pair: _Pair, weight: torch.Tensor) -> torch.Tensor:
    up, down = pair.up.float(), pair.down.float()
    rank = down.shape[0]
    delta = up.flatten(1) @ down.flatten(1)
    scale = pair.alpha / rank if pair.alpha is not None else 1.0
    return (delta * scale).reshape(weight.shape)


# --- patching a pipeline -------------------------------------------------------------------------


_Target = torch.nn.Linear | torch.nn.Conv2d
TEXT_ENCODERS = ("text_encoder", "text_encoder_2")


@dataclass(frozen=True)
class ActiveLora:
    name: str
    path: Path
    te_weight: float
    unet_weight: float
    mentioned: str = ""  # as the prompt / request named it (A1111's infotext key); "" -> name


@dataclass
class _PipelineLoras:
    backups: dict[str, tuple[_Target, torch.Tensor]] = field(default_factory=dict)
    # The set the weights hold; None while patching (a set that failed half-way): the next
    # ``apply_loras`` then restores the base weights whatever it asks for.
    active: tuple[tuple[str, float, float], ...] | None = ()
    loras: list[ActiveLora] = field(default_factory=list)  # what the pipeline's weights hold now


_STATE: weakref.WeakKeyDictionary[Any, _PipelineLoras] = weakref.WeakKeyDictionary()
_FILES: dict[tuple[str, float], tuple[list[_Pair], int]] = {}  # (path, mtime) -> pairs


def _modules(pipe: Any, component: str) -> dict[str, _Target]:
    """The patchable modules of one component by kohya name; the UNet's also by their original
    (sgm / ldm) names, which kohya's SDXL LoRAs use (``input_blocks_4_1_..._attn1_to_q``)."""
    model = getattr(pipe, component, None)
    if model is None:
        return {}
    out = {}
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear | torch.nn.Conv2d):
            name = name.removeprefix("text_model.")
            out[name.replace(".", "_")] = module
            original = sgm_name(name, model.config) if component == "unet" else None
            if original is not None:
                out.setdefault(original.replace(".", "_"), module)
    return out


_RESNET_PARTS = {"conv1": "in_layers.2", "conv2": "out_layers.3", "time_emb_proj": "emb_layers.1",
                 "conv_shortcut": "skip_connection"}  # fmt: skip
_TOP_LEVEL = {"conv_in": "input_blocks.0.0", "conv_out": "out.2", "time_embedding.linear_1": "time_embed.0",
              "time_embedding.linear_2": "time_embed.2", "add_embedding.linear_1": "label_emb.0.0",
              "add_embedding.linear_2": "label_emb.0.2"}  # fmt: skip


def sgm_name(name: str, config: Any) -> str | None:
    """A diffusers UNet module's name in the original checkpoint layout, or None if it has none.

    ``down_blocks.B.{resnets|attentions}.J`` is ``input_blocks.(1 + B*(L+1) + J).{0|1}`` with L the
    layers per block (each level ends in a downsampler, ``...op``); ``up_blocks.B.*.J`` is
    ``output_blocks.(B*(L+1) + J)``, its upsampler after the attention when the level has one;
    ``mid_block`` is ``middle_block.0/1/2``. Resnet parts and the embeddings are renamed too.
    """
    if name in _TOP_LEVEL:
        return _TOP_LEVEL[name]
    per_level = config.layers_per_block
    if not isinstance(per_level, int):
        return None  # per-level block counts: no checkpoint in the wild uses them with LoRAs
    parts = name.split(".")
    if parts[0] == "mid_block" and len(parts) > 3:
        index = {("resnets", "0"): 0, ("attentions", "0"): 1, ("resnets", "1"): 2}.get((parts[1], parts[2]))
        return None if index is None else _join(f"middle_block.{index}", parts[1], parts[3:])
    if parts[0] not in ("down_blocks", "up_blocks") or len(parts) < 5:
        return None
    level, kind, j, rest = int(parts[1]), parts[2], int(parts[3]), parts[4:]
    if parts[0] == "down_blocks":
        first = 1 + level * (per_level + 1)
        if kind == "downsamplers":
            return f"input_blocks.{first + per_level}.0.op" if rest == ["conv"] else None
        inner = {"resnets": 0, "attentions": 1}.get(kind)
        return None if inner is None else _join(f"input_blocks.{first + j}.{inner}", kind, rest)
    block = level * (per_level + 1)
    if kind == "upsamplers":
        attends = "CrossAttn" in config.up_block_types[level]
        return f"output_blocks.{block + per_level}.{2 if attends else 1}.conv" if rest == ["conv"] else None
    inner = {"resnets": 0, "attentions": 1}.get(kind)
    return None if inner is None else _join(f"output_blocks.{block + j}.{inner}", kind, rest)


def _join(prefix: str, kind: str, rest: list[str]) -> str | None:
    tail = ".".join(rest)
    if kind == "resnets":
        if tail not in _RESNET_PARTS:
            return None
        tail = _RESNET_PARTS[tail]
    return f"{prefix}.{tail}"


def _load(path: Path) -> tuple[list[_Pair], int]:
    key = (str(path), path.stat().st_mtime)
    if key not in _FILES:
        if len(_FILES) > 16:
            _FILES.clear()
        _FILES[key] = read_pairs(load_file(str(path)))
    return _FILES[key]


def apply_loras(pipe: Any, wanted: list[ActiveLora]) -> None:
    """Make ``pipe``'s weights base + ``wanted`` (restoring first when the set changed)."""
    state = _STATE.setdefault(pipe, _PipelineLoras())
    signature = tuple((str(w.path), w.te_weight, w.unet_weight) for w in wanted)
    if signature == state.active:
        state.loras = list(wanted)
        return
    with torch.no_grad():
        state.active = None  # until the whole set is in
        state.loras = []
        for module, original in state.backups.values():
            module.weight.copy_(original)
        modules = {c: _modules(pipe, c) for c in ("unet", *TEXT_ENCODERS)}
        for lora in wanted:
            pairs, unknown = _load(lora.path)
            missed = unknown
            for pair in pairs:
                weight = lora.te_weight if pair.component in TEXT_ENCODERS else lora.unet_weight
                target = modules[pair.component].get(pair.module)
                if target is None:
                    missed += 1
                    continue
                if weight == 0:
                    continue
                key = f"{pair.component}:{pair.module}"
                if key not in state.backups:
                    state.backups[key] = (target, target.weight.detach().clone())
                delta = _delta(pair, target.weight) * weight
                target.weight.add_(delta.to(device=target.weight.device, dtype=target.weight.dtype))
            if missed:
                log.warning(
                    "LoRA %s: %d key(s) match no module of this model and were ignored", lora.name, missed
                )
        state.active = signature
        state.loras = list(wanted)


def activate(pipe: Any, catalog: ModelCatalog, request: GenerationRequest) -> list[str]:
    """Apply the request's LoRAs to ``pipe``; returns the names that match no file. Those are
    logged and skipped, not an error (A1111's rule; the native API refuses them at submit), and
    the caller names them in the result's notes (``missing_note``)."""
    refs = requested_loras(request)
    files = list_loras(catalog) if refs else []
    wanted, missing = [], []
    for ref in refs:
        found = find_lora(files, ref.name)
        if found is None:
            log.warning("LoRA not found: %s (GET /sdapi/v1/loras lists them)", ref.name)
            missing.append(ref.name)
            continue
        wanted.append(ActiveLora(found.alias, found.path, ref.te_weight, ref.unet_weight, ref.name))
    apply_loras(pipe, wanted)
    return list(dict.fromkeys(missing))


def missing_note(missing: list[str]) -> list[str]:
    """The note A1111 shows as a warning: ``Networks not found: a, b`` (nothing when none)."""
    return [f"Networks not found: {', '.join(missing)}"] if missing else []


# --- the infotext ----------------------------------------------------------------------------------

_HASHES: dict[tuple[str, float, int], str] = {}
_NO_SEPARATORS = str.maketrans("", "", ":,")  # A1111 drops these from the names it lists


def addnet_hash(path: Path) -> str:
    """The full sha256 A1111 shows LoRAs by: of the tensor data for safetensors, else the file."""
    stat = path.stat()
    key = (str(path), stat.st_mtime, stat.st_size)
    if key not in _HASHES:
        digest = hashlib.sha256()
        with path.open("rb") as f:
            if path.suffix.lower() == ".safetensors":
                header = int.from_bytes(f.read(8), "little")
                f.seek(8 + header)
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
        _HASHES[key] = digest.hexdigest()
    return _HASHES[key]


def infotext_params(pipe: Any) -> dict[str, object]:
    """``{"Lora hashes": "name: 0123456789ab, ..."}`` for the LoRAs now in ``pipe``; {} for none."""
    state = _STATE.get(pipe)
    hashes: dict[str, str] = {}
    for lora in state.loras if state is not None else ():
        name = (lora.mentioned or lora.name).translate(_NO_SEPARATORS)
        hashes[name] = addnet_hash(lora.path)[:12]
    return {"Lora hashes": ", ".join(f"{k}: {v}" for k, v in hashes.items())} if hashes else {}
