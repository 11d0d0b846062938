"""ControlNet models from the models folder (``ControlNet/``, ``controlnet/``), fully offline.

Three layouts load:
- diffusers folders (``config.json`` + weights): ``ControlNetModel.from_pretrained``, local only;
- single files in A1111's layout (``control_*.safetensors``: ``control_model.input_blocks...``,
  ``zero_convs``, ``input_hint_block``, ``middle_block_out``), keys converted by diffusers' converter
  (the hint block and SDXL's ``label_emb`` by hand: the converter assumes SD 1.5's exact hint block
  and skips them);
- single files already in diffusers' key layout (how most SDXL ControlNets ship).

``.pth``/``.ckpt`` files are read by the weights-only unpickler (``loading.read_state_dict``): a file
that holds code is refused. A single file carries no config: its family (SD 1.x, 2.x, XL) comes from
its tensor shapes, and its config from the checkpoint's own UNet config (what ``from_unet`` copies)
with everything the shapes show (levels, widths, depths, context width, hint embedding) read from
the file; the tensors must then fit exactly, or the file is refused.
"""

from __future__ import annotations

import inspect
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers import ControlNetModel
from diffusers.loaders.single_file_utils import convert_controlnet_checkpoint

from sdgate.core.models import ASSET_DIRS, ASSET_EXTENSIONS, Family
from sdgate.engine import configs as cfgs
from sdgate.engine.loading import StateDict, UnsupportedModel, materialize, read_state_dict

LDM_PREFIX = "control_model."
HINT = "input_hint_block."
_HASH_SUFFIX = re.compile(r"\s*\[[0-9a-fA-F]{6,64}\]\s*$")  # A1111 names: "control_sd15_canny [fef5e48e]"
_INIT_PARAMS = frozenset(inspect.signature(ControlNetModel.__init__).parameters) - {"self"}


@dataclass(frozen=True)
class ControlNetFile:
    """A ControlNet in the models folder: its name (file stem, or folder name) and where it is."""

    name: str
    relpath: str
    path: Path


# --- finding ----------------------------------------------------------------------------------------


def list_controlnets(models_dir: Path) -> list[ControlNetFile]:
    """Every ControlNet file and diffusers folder (a folder holding ``config.json``, whose own weight
    files are not listed on their own) under the ControlNet folders."""
    found: dict[Path, ControlNetFile] = {}
    for folder in ASSET_DIRS["controlnet"]:
        root = models_dir / folder
        if not root.is_dir():
            continue
        for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
            here = Path(dirpath)
            if here != root and "config.json" in filenames:
                found.setdefault(here.resolve(), _entry(here, root))
                dirnames.clear()
                continue
            dirnames.sort(key=str.lower)
            for name in sorted(filenames, key=str.lower):
                path = here / name
                if path.suffix.lower() in ASSET_EXTENSIONS["controlnet"]:
                    found.setdefault(path.resolve(), _entry(path, root))
    return list(found.values())


def _entry(path: Path, root: Path) -> ControlNetFile:
    name = path.name if path.is_dir() else path.stem
    return ControlNetFile(name, path.relative_to(root).as_posix(), path.resolve())


def find_controlnet(
    models_dir: Path, name: str, extra: list[ControlNetFile] | None = None
) -> ControlNetFile | None:
    """The ControlNet a client's name means: its name, relative path or file name, with or without
    A1111's `` [hash]`` suffix, exact first, then ignoring case."""
    wanted = _HASH_SUFFIX.sub("", name.strip().replace("\\", "/"))
    candidates = [*(extra or []), *list_controlnets(models_dir)]
    for fold in (False, True):
        for item in candidates:
            keys = {item.name, item.relpath, Path(item.relpath).name, Path(item.relpath).stem}
            if wanted in keys or (fold and wanted.casefold() in {k.casefold() for k in keys}):
                return item
    return None


# --- families -----------------------------------------------------------------------------------------


def family_of_state(state: StateDict) -> Family:
    """SD 1.x, 2.x or XL from a ControlNet's tensors (LDM or diffusers keys): XL has the added
    (pooled text + size) embedding, 2.x a linear attention projection, 1.x a 1x1 conv one."""
    if "label_emb.0.0.weight" in state or "add_embedding.linear_1.weight" in state:
        return "sdxl"
    proj = next((v for k, v in state.items() if k.endswith(".proj_in.weight")), None)
    if proj is None:
        raise UnsupportedModel("no attention layers: not an SD ControlNet")
    return "sd2" if proj.dim() == 2 else "sd1"


def family_of_config(config: Any) -> Family:
    if config.get("addition_embed_type") == "text_time":
        return "sdxl"
    return "sd2" if config.get("use_linear_projection") else "sd1"


# --- loading ------------------------------------------------------------------------------------------


def load_controlnet(path: Path, unet_config: Any, *, family: Family | None, dtype: torch.dtype) -> Any:
    """A ``ControlNetModel`` on the CPU in ``dtype``. ``unet_config`` (the checkpoint's UNet) fills
    what a single file's shapes do not show; ``family`` (the checkpoint's) is checked first: a
    ``FamilyMismatch`` names both."""
    if path.is_dir():
        config = ControlNetModel.load_config(str(path), local_files_only=True)
        _check_family(family_of_config(config), family)
        net = ControlNetModel.from_pretrained(str(path), local_files_only=True, dtype=dtype)
        return net.eval()
    state = read_state_dict(path)
    state = {k.removeprefix(LDM_PREFIX): v for k, v in state.items()}
    _check_family(family_of_state(state), family)
    if "controlnet_cond_embedding.conv_in.weight" in state:
        config = _config_from_diffusers_keys(state, unet_config)
        converted = state
    else:
        config = _config_from_ldm_keys(state, unet_config)
        converted = _convert_ldm(state, config)
    return materialize(lambda: ControlNetModel.from_config(config), converted, path.name, dtype)


class FamilyMismatch(UnsupportedModel):
    def __init__(self, found: Family, wanted: Family) -> None:
        super().__init__(f"it is an {_LABELS[found]} ControlNet, the checkpoint is {_LABELS[wanted]}")
        self.found, self.wanted = found, wanted


_LABELS: dict[str, str] = {"sd1": "SD 1.x", "sd2": "SD 2.x", "sdxl": "SDXL"}


def _check_family(found: Family, wanted: Family | None) -> None:
    if wanted is not None and found != wanted:
        raise FamilyMismatch(found, wanted)


def _base_config(unet_config: Any) -> dict[str, Any]:
    """What ``ControlNetModel.from_unet`` copies from a UNet's config."""
    return {k: v for k, v in dict(unet_config).items() if k in _INIT_PARAMS and not k.startswith("_")}


def _hint_channels(convs: list[tuple[int, int]]) -> tuple[list[int], int]:
    """The hint embedding's ``conditioning_embedding_out_channels`` and input channels, from its
    convs' (out, in) channels in order: conv_in, pairs of (same width, next width), conv_out."""
    if len(convs) < 2 or len(convs) % 2:
        raise UnsupportedModel(f"a hint block of {len(convs)} convolutions is not a ControlNet's")
    inner = convs[:-1]
    return [inner[0][0], *(out for out, _ in inner[2::2])], convs[0][1]


def _config_from_ldm_keys(state: StateDict, unet_config: Any) -> dict[str, Any]:
    family = family_of_state(state)
    shapes: dict[str, tuple[int, ...]] = {cfgs.UNET + k: tuple(v.shape) for k, v in state.items()}
    in_channels = shapes[cfgs.UNET + "input_blocks.0.0.weight"][1]
    shapes[cfgs.UNET + "out.2.weight"] = (in_channels,)  # a ControlNet has no output conv
    base = _base_config(unet_config)
    if family == "sdxl":  # the pooled width is not in a ControlNet; the UNet's config has it
        shapes.pop(cfgs.UNET + "label_emb.0.0.weight", None)
    cfg = cfgs.unet_config(shapes, family, base, native_size=8, vae_factor=1)
    cfg = {k: v for k, v in cfg.items() if k in _INIT_PARAMS}
    if "label_emb.0.0.weight" in state:
        cfg["projection_class_embeddings_input_dim"] = state["label_emb.0.0.weight"].shape[1]
    hint = sorted(
        {int(k[len(HINT) :].split(".")[0]) for k in state if k.startswith(HINT) and k.endswith(".weight")}
    )
    convs = [tuple(state[f"{HINT}{i}.weight"].shape[:2]) for i in hint]
    cfg["conditioning_embedding_out_channels"], cfg["conditioning_channels"] = _hint_channels(convs)  # type: ignore[arg-type]
    return _keep_heads(cfg, base)


def _config_from_diffusers_keys(state: StateDict, unet_config: Any) -> dict[str, Any]:
    cfg = _base_config(unet_config)
    levels = sorted({int(k.split(".")[1]) for k in state if k.startswith("down_blocks.")})
    channels, attention, depth = [], [], []
    for i in levels:
        channels.append(int(state[f"down_blocks.{i}.resnets.0.conv2.weight"].shape[0]))
        attn = f"down_blocks.{i}.attentions.0."
        attention.append(attn + "proj_in.weight" in state)
        blocks = {int(k.split(".")[5]) for k in state if k.startswith(attn + "transformer_blocks.")}
        depth.append(len(blocks) or 1)
    per_level = len({k.split(".")[3] for k in state if k.startswith("down_blocks.0.resnets.")})
    proj = next(v for k, v in state.items() if k.endswith(".proj_in.weight"))
    context = next(v for k, v in state.items() if k.endswith("attn2.to_k.weight"))
    cfg.update(
        in_channels=int(state["conv_in.weight"].shape[1]),
        block_out_channels=channels,
        layers_per_block=per_level,
        down_block_types=["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attention],
        transformer_layers_per_block=depth[0] if len(set(depth)) == 1 else depth,
        cross_attention_dim=int(context.shape[1]),
        use_linear_projection=proj.dim() == 2,
    )
    if "add_embedding.linear_1.weight" in state:
        cfg["projection_class_embeddings_input_dim"] = int(state["add_embedding.linear_1.weight"].shape[1])
    blocks = sorted(
        {int(k.split(".")[2]) for k in state if k.startswith("controlnet_cond_embedding.blocks.")}
    )
    convs = [tuple(state["controlnet_cond_embedding.conv_in.weight"].shape[:2])]
    convs += [tuple(state[f"controlnet_cond_embedding.blocks.{i}.weight"].shape[:2]) for i in blocks]
    convs.append(tuple(state["controlnet_cond_embedding.conv_out.weight"].shape[:2]))
    cfg["conditioning_embedding_out_channels"], cfg["conditioning_channels"] = _hint_channels(convs)  # type: ignore[arg-type]
    return _keep_heads(cfg, _base_config(unet_config))


def _keep_heads(cfg: dict[str, Any], base: dict[str, Any]) -> dict[str, Any]:
    """Heads do not show in shapes: the UNet's where the widths agree, else the family's convention
    (``engine.configs``: 8 for SD 1.x, 64-channel heads otherwise)."""
    if list(cfg["block_out_channels"]) == list(base.get("block_out_channels", [])):
        cfg["attention_head_dim"] = base.get("attention_head_dim")
        cfg["num_attention_heads"] = base.get("num_attention_heads")
    else:
        linear = cfg.get("use_linear_projection") or cfg.get("addition_embed_type") == "text_time"
        cfg["attention_head_dim"] = (
            [max(1, ch // cfgs.HEAD_CHANNELS) for ch in cfg["block_out_channels"]]
            if linear
            else cfgs.SD1_HEADS
        )
        cfg["num_attention_heads"] = None
    return cfg


def _convert_ldm(state: StateDict, config: dict[str, Any]) -> StateDict:
    """A1111 keys -> diffusers keys: diffusers' converter for the UNet half, the rest by hand."""
    body = {k: v for k, v in state.items() if not k.startswith(HINT)}
    out = dict(convert_controlnet_checkpoint(body, config))
    hint = sorted({int(k[len(HINT) :].split(".")[0]) for k in state if k.startswith(HINT)})
    names = ["conv_in", *(f"blocks.{i}" for i in range(len(hint) - 2)), "conv_out"]
    for index, name in zip(hint, names, strict=True):
        for part in ("weight", "bias"):
            out[f"controlnet_cond_embedding.{name}.{part}"] = state[f"{HINT}{index}.{part}"]
    for ldm, hf in (
        ("label_emb.0.0.", "add_embedding.linear_1."),
        ("label_emb.0.2.", "add_embedding.linear_2."),
    ):
        for part in ("weight", "bias"):
            if ldm + part in state:
                out[hf + part] = state[ldm + part]
    return {k: v for k, v in out.items() if v is not None}


def net_bytes(net: Any) -> int:
    return sum(t.numel() * t.element_size() for t in (*net.parameters(), *net.buffers()))
