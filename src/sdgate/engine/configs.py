"""Diffusers component configs for a single-file checkpoint, derived from its tensor shapes.

A checkpoint in the original (LDM/CompVis) layout carries no config. Everything that shows in a
tensor's shape (channels, levels, blocks per level, transformer depth, context width, text encoder
width and depth, VAE levels) is read from the shapes; what does not (activation functions, norm
groups, scaling factor, noise schedule) comes from the configs shipped in ``assets/configs/<family>``.
So a tiny random test checkpoint and a real SD 1.5 / 2.x / XL file take exactly the same path.

Two facts are conventions rather than shapes, and tiny test models follow them too:
- attention heads: SD 1.x uses 8 heads per block; SD 2.x and XL use 64-channel heads
  (``channels // 64``, at least one);
- text encoders: 64-channel heads (CLIP-L 12, OpenCLIP-H 16, bigG 20), at least one.

Torch-free: these functions only look at ``{key: shape}`` mappings.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import Any

from sdgate.core.models import Family

Shapes = Mapping[str, tuple[int, ...]]
Config = dict[str, Any]

CONFIGS_DIR = Path(__file__).resolve().parent.parent / "assets" / "configs"
UNET = "model.diffusion_model."
VAE = "first_stage_model."
SD1_CLIP = "cond_stage_model.transformer.text_model."
SD2_OPENCLIP = "cond_stage_model.model."
XL_CLIP = "conditioner.embedders.0.transformer.text_model."
XL_OPENCLIP = "conditioner.embedders.1.model."
SD1_HEADS = 8
HEAD_CHANNELS = 64


class UnsupportedCheckpoint(ValueError):
    """The file is not an SD 1.x / 2.x / XL checkpoint this loader understands."""


def config_key(family: Family, v_prediction: bool) -> str:
    """The folder under ``assets/configs`` for a family (SD 2.x 768-v has its own)."""
    return "sd2-v" if family == "sd2" and v_prediction else family


@cache
def _shipped(key: str) -> dict[str, Config]:
    root = CONFIGS_DIR / key
    if not root.is_dir():
        raise UnsupportedCheckpoint(f"no shipped configs for {key!r}")
    out: dict[str, Config] = {}
    for path in sorted(root.rglob("*.json")):
        name = path.parent.name if path.parent != root else path.stem
        out[name] = json.loads(path.read_text(encoding="utf-8"))
    return out


def shipped_configs(key: str) -> dict[str, Config]:
    """The shipped configs of one family folder, by component (``unet``, ``vae``, ``model_index``...)."""
    return copy.deepcopy(_shipped(key))


def _indices(shapes: Shapes, prefix: str) -> list[int]:
    """Sorted distinct N of keys ``<prefix>N.``."""
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    return sorted({int(m.group(1)) for k in shapes if (m := pattern.match(k))})


def _shape(shapes: Shapes, key: str) -> tuple[int, ...]:
    try:
        return shapes[key]
    except KeyError:
        raise UnsupportedCheckpoint(f"checkpoint lacks {key}") from None


def _heads(family: Family, channels: list[int]) -> int | list[int]:
    if family == "sd1":
        return SD1_HEADS
    return [max(1, ch // HEAD_CHANNELS) for ch in channels]


def unet_config(shapes: Shapes, family: Family, base: Config, *, native_size: int, vae_factor: int) -> Config:
    """UNet2DConditionModel config from ``model.diffusion_model.*`` shapes."""
    model_channels, in_channels = _shape(shapes, UNET + "input_blocks.0.0.weight")[:2]
    blocks = _indices(shapes, UNET + "input_blocks.")
    downsamples = [i for i in blocks if UNET + f"input_blocks.{i}.0.op.weight" in shapes]
    levels = len(downsamples) + 1
    per_level = (len(blocks) - levels) // levels  # minus conv_in and the downsamplers
    channels, attention, depth = [], [], []
    proj_ndim, context_dim = 4, None
    for level in range(levels):
        first = 1 + level * (per_level + 1)
        channels.append(_shape(shapes, UNET + f"input_blocks.{first}.0.out_layers.3.weight")[0])
        attn = UNET + f"input_blocks.{first}.1."
        has_attention = attn + "proj_in.weight" in shapes
        attention.append(has_attention)
        depth.append(len(_indices(shapes, attn + "transformer_blocks.")) if has_attention else 1)
        if has_attention and context_dim is None:
            proj_ndim = len(shapes[attn + "proj_in.weight"])
            context_dim = _shape(shapes, attn + "transformer_blocks.0.attn2.to_k.weight")[1]
    cfg = dict(base)
    cfg.update(
        in_channels=in_channels,
        out_channels=_shape(shapes, UNET + "out.2.weight")[0],
        block_out_channels=channels,
        layers_per_block=per_level,
        down_block_types=["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attention],
        up_block_types=["CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attention)],
        transformer_layers_per_block=depth[0] if len(set(depth)) == 1 else depth,
        cross_attention_dim=context_dim or base["cross_attention_dim"],
        use_linear_projection=proj_ndim == 2,
        attention_head_dim=_heads(family, channels),
        sample_size=native_size // vae_factor,
    )
    if model_channels != channels[0]:
        raise UnsupportedCheckpoint("first UNet level does not keep conv_in's width")
    label = UNET + "label_emb.0.0.weight"
    if family == "sdxl" and label in shapes:
        adm_in = shapes[label][1]
        pooled = _shape(shapes, XL_OPENCLIP + "text_projection")[1]
        cfg.update(
            projection_class_embeddings_input_dim=adm_in, addition_time_embed_dim=(adm_in - pooled) // 6
        )
    return cfg


def vae_config(shapes: Shapes, base: Config, *, native_size: int) -> Config:
    """AutoencoderKL config from ``first_stage_model.*`` shapes."""
    levels = _indices(shapes, VAE + "encoder.down.")
    if not levels:
        raise UnsupportedCheckpoint("checkpoint has no VAE (first_stage_model.*)")
    channels = [_shape(shapes, VAE + f"encoder.down.{i}.block.0.conv2.weight")[0] for i in levels]
    cfg = dict(base)
    cfg.update(
        in_channels=_shape(shapes, VAE + "encoder.conv_in.weight")[1],
        out_channels=_shape(shapes, VAE + "decoder.conv_out.weight")[0],
        latent_channels=_shape(shapes, VAE + "decoder.conv_in.weight")[1],
        block_out_channels=channels,
        layers_per_block=len(_indices(shapes, VAE + "encoder.down.0.block.")),
        down_block_types=["DownEncoderBlock2D"] * len(channels),
        up_block_types=["UpDecoderBlock2D"] * len(channels),
        sample_size=native_size,
    )
    return cfg


def clip_config(shapes: Shapes, prefix: str, base: Config) -> Config:
    """CLIPTextConfig kwargs for an OpenAI CLIP text model stored in transformers' layout."""
    vocab, hidden = _shape(shapes, prefix + "embeddings.token_embedding.weight")
    cfg = dict(base)
    cfg.update(
        vocab_size=vocab,
        hidden_size=hidden,
        max_position_embeddings=_shape(shapes, prefix + "embeddings.position_embedding.weight")[0],
        num_hidden_layers=len(_indices(shapes, prefix + "encoder.layers.")),
        intermediate_size=_shape(shapes, prefix + "encoder.layers.0.mlp.fc1.weight")[0],
        num_attention_heads=max(1, hidden // HEAD_CHANNELS),
    )
    return cfg


def open_clip_config(shapes: Shapes, prefix: str, base: Config, *, drop_last_layer: bool) -> Config:
    """CLIPTextConfig kwargs for an OpenCLIP text tower (``token_embedding``, ``resblocks``...).

    SD 2.x conditions on the penultimate layer, so its diffusers text encoder simply has one layer
    fewer (``drop_last_layer``); SDXL's bigG keeps all layers and a projection.
    """
    vocab, hidden = _shape(shapes, prefix + "token_embedding.weight")
    layers = len(_indices(shapes, prefix + "transformer.resblocks."))
    cfg = dict(base)
    cfg.update(
        vocab_size=vocab,
        hidden_size=hidden,
        max_position_embeddings=_shape(shapes, prefix + "positional_embedding")[0],
        num_hidden_layers=layers - 1 if drop_last_layer else layers,
        intermediate_size=_shape(shapes, prefix + "transformer.resblocks.0.mlp.c_fc.weight")[0],
        num_attention_heads=max(1, hidden // HEAD_CHANNELS),
    )
    if prefix + "text_projection" in shapes and not drop_last_layer:
        cfg["projection_dim"] = shapes[prefix + "text_projection"][1]
    return cfg


def native_size_of(configs: Mapping[str, Config]) -> int:
    """The image size a model was trained at: UNet sample size times the VAE's factor."""
    factor = 2 ** (len(configs["vae"]["block_out_channels"]) - 1)
    return int(configs["unet"]["sample_size"]) * factor


def component_configs(
    shapes: Shapes, family: Family, *, v_prediction: bool = False, native_size: int | None = None
) -> dict[str, Config]:
    """All component configs (``unet``, ``vae``, ``text_encoder``[, ``text_encoder_2``],
    ``scheduler``, ``tokenizer``[, ``tokenizer_2``], ``model_index``) of one checkpoint."""
    key = config_key(family, v_prediction)
    out = shipped_configs(key)
    size = native_size or native_size_of(out)
    vae = vae_config(shapes, out["vae"], native_size=size)
    factor = 2 ** (len(vae["block_out_channels"]) - 1)
    out["vae"] = vae
    out["unet"] = unet_config(shapes, family, out["unet"], native_size=size, vae_factor=factor)
    if family == "sd1":
        out["text_encoder"] = clip_config(shapes, SD1_CLIP, out["text_encoder"])
    elif family == "sd2":
        out["text_encoder"] = open_clip_config(
            shapes, SD2_OPENCLIP, out["text_encoder"], drop_last_layer=True
        )
    else:
        out["text_encoder"] = clip_config(shapes, XL_CLIP, out["text_encoder"])
        out["text_encoder_2"] = open_clip_config(
            shapes, XL_OPENCLIP, out["text_encoder_2"], drop_last_layer=False
        )
    return out
