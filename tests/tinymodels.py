"""Tiny random-weight Stable Diffusion models, built in code, for tests that must not download.

Each family (SD 1.x, SD 2.x, SDXL) is built as diffusers components with seeded weights and the
shipped CLIP tokenizer, then saved either as a diffusers folder or as ONE checkpoint in the
original LDM/CompVis key layout (``model.diffusion_model.*``, ``first_stage_model.*``,
``cond_stage_model.*`` / ``conditioner.embedders.*``), so the loader's single-file path runs exactly
as it does for a real checkpoint. The tiny models follow the same head conventions as the real
ones (see ``sdgate.engine.configs``): SD 1.x 8 heads, others 64-channel heads (at least one).

The diffusers -> LDM key conversion below is the inverse of diffusers' ``convert_ldm_*`` functions
(after diffusers' ``scripts/convert_diffusers_to_original_stable_diffusion.py``), generalised to
any number of levels and blocks. It works on meta tensors too, which is how the tests get the
exact key/shape lists of full-size SD 1.5 / 2.x / XL checkpoints without any weights.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

import torch
from diffusers import (
    AutoencoderKL,
    EulerDiscreteScheduler,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from safetensors.torch import save_file
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from sdgate.engine.configs import shipped_configs

TOKENIZER_DIR = Path(__file__).resolve().parent.parent / "src" / "sdgate" / "assets" / "tokenizer"
TINY = 32  # channels of everything

Tensor = Any  # torch.Tensor, possibly on the meta device


# --- building -------------------------------------------------------------------------------------


def tokenizer(pad_token: str = "<|endoftext|>") -> CLIPTokenizer:
    return CLIPTokenizer(
        str(TOKENIZER_DIR / "vocab.json"),
        str(TOKENIZER_DIR / "merges.txt"),
        pad_token=pad_token,
        model_max_length=77,
    )


def _text_config(hidden_act: str, layers: int = 2) -> CLIPTextConfig:
    return CLIPTextConfig(
        vocab_size=49408,
        hidden_size=TINY,
        intermediate_size=2 * TINY,
        num_hidden_layers=layers,
        num_attention_heads=1,
        max_position_embeddings=77,
        hidden_act=hidden_act,
        projection_dim=TINY,
    )


def _vae(levels: int, scaling_factor: float) -> AutoencoderKL:
    return AutoencoderKL(
        block_out_channels=(TINY,) * levels,
        layers_per_block=1,
        latent_channels=4,
        down_block_types=("DownEncoderBlock2D",) * levels,
        up_block_types=("UpDecoderBlock2D",) * levels,
        norm_num_groups=TINY,
        scaling_factor=scaling_factor,
        sample_size=64,
    )


def _scheduler(key: str) -> EulerDiscreteScheduler:
    return EulerDiscreteScheduler.from_config(shipped_configs(key)["scheduler"])


def tiny_sd(seed: int = 0, *, family: str = "sd1", vae_levels: int = 4) -> Any:
    """An SD 1.x (or, with ``family="sd2"``, SD 2.x-shaped) pipeline with ~2M random weights."""
    torch.manual_seed(seed)
    sd2 = family == "sd2"
    unet = UNet2DConditionModel(
        block_out_channels=(TINY, 2 * TINY),
        layers_per_block=1,
        sample_size=8,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=TINY,
        attention_head_dim=[1, 1] if sd2 else 8,
        use_linear_projection=sd2,
        norm_num_groups=TINY,
    )
    text = CLIPTextModel(_text_config("gelu" if sd2 else "quick_gelu"))
    return StableDiffusionPipeline(
        vae=_vae(vae_levels, 0.18215),
        text_encoder=text,
        tokenizer=tokenizer("!" if sd2 else "<|endoftext|>"),
        unet=unet,
        scheduler=_scheduler("sd2" if sd2 else "sd1"),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def tiny_sdxl(seed: int = 0) -> Any:
    torch.manual_seed(seed)
    time_dim = 8
    unet = UNet2DConditionModel(
        block_out_channels=(TINY, 2 * TINY),
        layers_per_block=1,
        sample_size=8,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 2),
        cross_attention_dim=2 * TINY,
        attention_head_dim=[1, 1],
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=time_dim,
        projection_class_embeddings_input_dim=TINY + 6 * time_dim,
        norm_num_groups=TINY,
    )
    return StableDiffusionXLPipeline(
        vae=_vae(4, 0.13025),
        text_encoder=CLIPTextModel(_text_config("quick_gelu")),
        text_encoder_2=CLIPTextModelWithProjection(_text_config("gelu")),
        tokenizer=tokenizer(),
        tokenizer_2=tokenizer("!"),
        unet=unet,
        scheduler=_scheduler("sdxl"),
        add_watermarker=False,
    )


# --- diffusers -> LDM keys ------------------------------------------------------------------------

_UNET_RESNET = (
    ("norm1", "in_layers.0"),
    ("conv1", "in_layers.2"),
    ("norm2", "out_layers.0"),
    ("conv2", "out_layers.3"),
    ("time_emb_proj", "emb_layers.1"),
    ("conv_shortcut", "skip_connection"),
)
_VAE_ATTN = (
    ("group_norm.", "norm."),
    ("to_q.", "q."),
    ("to_k.", "k."),
    ("to_v.", "v."),
    ("to_out.0.", "proj_out."),
)


def _rename(key: str, prefixes: list[tuple[str, str]]) -> str:
    """Swap the longest matching diffusers prefix for its LDM one."""
    best = max((p for p in prefixes if key.startswith(p[0])), key=lambda p: len(p[0]), default=None)
    if best is None:
        raise KeyError(f"no LDM name for {key}")
    return best[1] + key[len(best[0]) :]


def unet_to_ldm(sd: dict[str, Tensor], config: Any) -> dict[str, Tensor]:
    levels, n = len(config.block_out_channels), config.layers_per_block
    prefixes = [
        ("time_embedding.linear_1.", "time_embed.0."),
        ("time_embedding.linear_2.", "time_embed.2."),
        ("conv_in.", "input_blocks.0.0."),
        ("conv_norm_out.", "out.0."),
        ("conv_out.", "out.2."),
        ("add_embedding.linear_1.", "label_emb.0.0."),
        ("add_embedding.linear_2.", "label_emb.0.2."),
        ("mid_block.resnets.0.", "middle_block.0."),
        ("mid_block.attentions.0.", "middle_block.1."),
        ("mid_block.resnets.1.", "middle_block.2."),
    ]
    for i in range(levels):
        for j in range(n):
            prefixes.append((f"down_blocks.{i}.resnets.{j}.", f"input_blocks.{(n + 1) * i + j + 1}.0."))
            prefixes.append((f"down_blocks.{i}.attentions.{j}.", f"input_blocks.{(n + 1) * i + j + 1}.1."))
        for j in range(n + 1):
            prefixes.append((f"up_blocks.{i}.resnets.{j}.", f"output_blocks.{(n + 1) * i + j}.0."))
            prefixes.append((f"up_blocks.{i}.attentions.{j}.", f"output_blocks.{(n + 1) * i + j}.1."))
        if i < levels - 1:
            prefixes.append(
                (f"down_blocks.{i}.downsamplers.0.conv.", f"input_blocks.{(n + 1) * (i + 1)}.0.op.")
            )
            slot = 2 if "CrossAttn" in config.up_block_types[i] else 1
            prefixes.append((f"up_blocks.{i}.upsamplers.0.", f"output_blocks.{(n + 1) * i + n}.{slot}."))
    out = {}
    for key, value in sd.items():
        new = _rename(key, prefixes)
        if ".resnets." in key:
            for hf, ldm in _UNET_RESNET:
                new = new.replace(f".{hf}.", f".{ldm}.")
        out["model.diffusion_model." + new] = value
    return out


def vae_to_ldm(sd: dict[str, Tensor], config: Any) -> dict[str, Tensor]:
    levels, n = len(config.block_out_channels), config.layers_per_block
    prefixes = [
        ("encoder.", "encoder."),
        ("decoder.", "decoder."),
        ("quant_conv.", "quant_conv."),
        ("post_quant_conv.", "post_quant_conv."),
    ]
    for part in ("encoder", "decoder"):
        prefixes += [
            (f"{part}.conv_norm_out.", f"{part}.norm_out."),
            (f"{part}.mid_block.attentions.0.", f"{part}.mid.attn_1."),
        ]
        prefixes += [(f"{part}.mid_block.resnets.{i}.", f"{part}.mid.block_{i + 1}.") for i in range(2)]
    for i in range(levels):
        up = levels - 1 - i
        prefixes += [
            (f"encoder.down_blocks.{i}.resnets.{j}.", f"encoder.down.{i}.block.{j}.") for j in range(n)
        ]
        prefixes += [
            (f"decoder.up_blocks.{i}.resnets.{j}.", f"decoder.up.{up}.block.{j}.") for j in range(n + 1)
        ]
        if i < levels - 1:
            prefixes.append((f"encoder.down_blocks.{i}.downsamplers.0.", f"encoder.down.{i}.downsample."))
            prefixes.append((f"decoder.up_blocks.{i}.upsamplers.0.", f"decoder.up.{up}.upsample."))
    out = {}
    for key, value in sd.items():
        new = _rename(key, prefixes).replace("conv_shortcut", "nin_shortcut")
        if ".attn_1." in new:
            for hf, ldm in _VAE_ATTN:
                new = new.replace(f".attn_1.{hf}", f".attn_1.{ldm}")
            if value.ndim == 2:  # LDM keeps the VAE attention projections as 1x1 convolutions
                value = value[:, :, None, None]
        out["first_stage_model." + new] = value
    return out


def clip_to_ldm(sd: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    """OpenAI CLIP (transformers layout, as SD 1.x and SDXL's first encoder store it)."""
    return {
        prefix + "text_model." + k.removeprefix("text_model."): v
        for k, v in sd.items()
        if not k.endswith("position_ids")
    }


def open_clip_to_ldm(sd: dict[str, Tensor], prefix: str, *, extra_layer: bool) -> dict[str, Tensor]:
    """OpenCLIP's own layout (SD 2.x, SDXL's bigG): fused q/k/v, ``resblocks``, ``ln_final``.

    ``extra_layer`` appends one more (random) resblock and a projection, as a real SD 2.x file has
    24 layers of which the model uses the penultimate.
    """
    sd = {k.removeprefix("text_model."): v for k, v in sd.items()}
    out = {
        prefix + "token_embedding.weight": sd["embeddings.token_embedding.weight"],
        prefix + "positional_embedding": sd["embeddings.position_embedding.weight"],
        prefix + "ln_final.weight": sd["final_layer_norm.weight"],
        prefix + "ln_final.bias": sd["final_layer_norm.bias"],
    }
    hidden = sd["embeddings.token_embedding.weight"].shape[1]
    if "text_projection.weight" in sd:
        out[prefix + "text_projection"] = sd["text_projection.weight"].T.contiguous()
    layers = sorted({int(k.split(".")[2]) for k in sd if k.startswith("encoder.layers.")})
    for i in layers:
        out.update(_resblock(lambda name, i=i: sd[f"encoder.layers.{i}.{name}"], prefix, i))
    if extra_layer:
        like = lambda name: torch.randn_like(sd[f"encoder.layers.0.{name}"]) * 0.02  # noqa: E731
        out.update(_resblock(like, prefix, len(layers)))
        out[prefix + "text_projection"] = torch.randn(
            hidden, hidden, device=out[prefix + "ln_final.weight"].device
        )
    return out


def _resblock(get: Any, prefix: str, i: int) -> dict[str, Tensor]:
    p = f"{prefix}transformer.resblocks.{i}."
    qkv = ("q_proj", "k_proj", "v_proj")
    return {
        p + "ln_1.weight": get("layer_norm1.weight"),
        p + "ln_1.bias": get("layer_norm1.bias"),
        p + "ln_2.weight": get("layer_norm2.weight"),
        p + "ln_2.bias": get("layer_norm2.bias"),
        p + "attn.in_proj_weight": torch.cat([get(f"self_attn.{x}.weight") for x in qkv]),
        p + "attn.in_proj_bias": torch.cat([get(f"self_attn.{x}.bias") for x in qkv]),
        p + "attn.out_proj.weight": get("self_attn.out_proj.weight"),
        p + "attn.out_proj.bias": get("self_attn.out_proj.bias"),
        p + "mlp.c_fc.weight": get("mlp.fc1.weight"),
        p + "mlp.c_fc.bias": get("mlp.fc1.bias"),
        p + "mlp.c_proj.weight": get("mlp.fc2.weight"),
        p + "mlp.c_proj.bias": get("mlp.fc2.bias"),
    }


def pipeline_to_ldm(pipe: Any, family: str) -> dict[str, Tensor]:
    """The whole pipeline as one LDM-layout state dict (what a ``.safetensors`` checkpoint holds)."""
    out = unet_to_ldm(pipe.unet.state_dict(), pipe.unet.config)
    out.update(vae_to_ldm(pipe.vae.state_dict(), pipe.vae.config))
    te = pipe.text_encoder.state_dict()
    if family == "sd1":
        out.update(clip_to_ldm(te, "cond_stage_model.transformer."))
    elif family == "sd2":
        out.update(open_clip_to_ldm(te, "cond_stage_model.model.", extra_layer=True))
    else:
        out.update(clip_to_ldm(te, "conditioner.embedders.0.transformer."))
        out.update(
            open_clip_to_ldm(
                pipe.text_encoder_2.state_dict(), "conditioner.embedders.1.model.", extra_layer=False
            )
        )
    return out


# --- saving ---------------------------------------------------------------------------------------


def save_single_file(pipe: Any, family: str, path: Path) -> Path:
    """One checkpoint in the LDM layout: ``.safetensors``, or ``.ckpt`` (a torch pickle, A1111 style)."""
    sd = {k: v.detach().contiguous().clone() for k, v in pipeline_to_ldm(pipe, family).items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".ckpt":
        torch.save({"state_dict": sd, "global_step": 1}, path)
    else:
        save_file(sd, str(path))
    return path


def save_diffusers(pipe: Any, folder: Path) -> Path:
    pipe.save_pretrained(str(folder), safe_serialization=True)
    return folder


def write_header_only(
    path: Path, shapes: dict[str, tuple[int, ...]], metadata: dict[str, str] | None = None
) -> Path:
    """A safetensors file whose header lists ``shapes`` but holds no data: enough for the catalog."""
    header: dict[str, Any] = {
        k: {"dtype": "F16", "shape": list(v), "data_offsets": [0, 0]} for k, v in shapes.items()
    }
    header["__metadata__"] = metadata or {"format": "pt"}
    raw = json.dumps(header).encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(len(raw).to_bytes(8, "little") + raw)
    return path


@cache
def real_ldm_meta(family: str) -> dict[str, Tensor]:
    """A full-size SD 1.5 / 2.x / XL checkpoint in the LDM layout, as meta tensors (no memory).

    Cached: callers must not modify the dict."""
    from accelerate import init_empty_weights

    cfg = shipped_configs(family)
    with init_empty_weights(include_buffers=True):
        unet = UNet2DConditionModel.from_config(cfg["unet"])
        vae = AutoencoderKL.from_config(cfg["vae"])
        te = CLIPTextModel(CLIPTextConfig(**cfg["text_encoder"]))
        parts: dict[str, Any] = {"unet": unet, "vae": vae, "text_encoder": te}
        if "text_encoder_2" in cfg:
            parts["text_encoder_2"] = CLIPTextModelWithProjection(CLIPTextConfig(**cfg["text_encoder_2"]))
    pipe = type("MetaPipe", (), parts)()
    return pipeline_to_ldm(pipe, family)


def real_ldm_shapes(family: str) -> dict[str, tuple[int, ...]]:
    """Key -> shape of a full-size SD 1.5 / 2.x / XL checkpoint."""
    return {k: tuple(v.shape) for k, v in real_ldm_meta(family).items()}
