"""The demo model's architecture: small diffusers components in the standard Stable Diffusion layout.

The VAE downsamples by 16 (five blocks), so a 512x512 image is a 32x32 latent and a 256x256 one is
16x16; the UNet has three levels with cross-attention; the text encoder is a small CLIP text model
trained from scratch over the real CLIP BPE tokenizer (its 49408-row embedding is most of its size,
hence the narrow width). The VAE normalises over few, wide groups: with one channel per group a
plain background's colour is normalised away before the decoder's last layer. The scheduler is
Stable Diffusion's own ("scaled_linear" betas, epsilon prediction).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

MODEL_NAME = "sdgate-demo-shapes"
WEIGHTS_DIR = Path(__file__).parent / "weights" / MODEL_NAME
TOKENIZER_DIR = Path(__file__).parent.parent / "assets" / "tokenizer"
NATIVE_SIZE = 256
VAE_FACTOR = 16
MAX_TOKENS = 77

VAE_CONFIG: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 5,
    "up_block_types": ["UpDecoderBlock2D"] * 5,
    "block_out_channels": [16, 32, 64, 64, 96],
    "layers_per_block": 1,
    "latent_channels": 4,
    "norm_num_groups": 2,
    "sample_size": NATIVE_SIZE,
    "scaling_factor": 1.0,
}

TEXT_HIDDEN = 64

TEXT_CONFIG: dict[str, Any] = {
    "vocab_size": 49408,
    "hidden_size": TEXT_HIDDEN,
    "intermediate_size": 4 * TEXT_HIDDEN,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "max_position_embeddings": MAX_TOKENS,
    "hidden_act": "quick_gelu",
    "bos_token_id": 49406,
    "eos_token_id": 49407,
    "pad_token_id": 49407,
    "projection_dim": TEXT_HIDDEN,
}

UNET_CONFIG: dict[str, Any] = {
    "sample_size": NATIVE_SIZE // VAE_FACTOR,
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    "block_out_channels": [32, 64, 128],
    "layers_per_block": 1,
    "cross_attention_dim": TEXT_HIDDEN,
    "attention_head_dim": 4,
    "norm_num_groups": 8,
}

SCHEDULER_CONFIG: dict[str, Any] = {
    "_class_name": "EulerDiscreteScheduler",
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "prediction_type": "epsilon",
    "steps_offset": 1,
    "timestep_spacing": "trailing",
    "interpolation_type": "linear",
    "use_karras_sigmas": False,
}


def load_tokenizer(path: Path | None = None) -> Any:
    from transformers import CLIPTokenizer

    folder = path or TOKENIZER_DIR
    return CLIPTokenizer(
        str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=MAX_TOKENS
    )


def build_components(seed: int = 0) -> dict[str, Any]:
    """Fresh, randomly initialised components (seeded)."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    vae = AutoencoderKL(**VAE_CONFIG)
    unet = UNet2DConditionModel(**UNET_CONFIG)
    text_encoder = CLIPTextModel(CLIPTextConfig(**TEXT_CONFIG))
    return {"vae": vae, "unet": unet, "text_encoder": text_encoder}


def make_scheduler() -> Any:
    from diffusers import EulerDiscreteScheduler

    cfg = {k: v for k, v in SCHEDULER_CONFIG.items() if not k.startswith("_")}
    return EulerDiscreteScheduler(**cfg)


def save_pipeline(components: dict[str, Any], folder: Path, *, fp16: bool = True) -> None:
    """Write a diffusers ``StableDiffusionPipeline`` folder (safetensors, tokenizer copied in)."""
    import torch
    from diffusers import StableDiffusionPipeline

    folder = Path(folder)
    parts = {}
    for name in ("vae", "unet", "text_encoder"):
        module = components[name]
        parts[name] = module.to(torch.float16) if fp16 else module
    pipe = StableDiffusionPipeline(
        **parts,
        tokenizer=load_tokenizer(),
        scheduler=make_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    pipe.save_pretrained(tmp, safe_serialization=True)
    _tidy_tokenizer(tmp / "tokenizer")
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
    for name in ("vae", "unet", "text_encoder"):
        components[name].to(torch.float32)


def _tidy_tokenizer(folder: Path) -> None:
    """Keep the tokenizer folder to the shipped BPE files plus a small, version-neutral config."""
    for f in folder.iterdir():
        f.unlink()
    for name in ("vocab.json", "merges.txt"):
        shutil.copy(TOKENIZER_DIR / name, folder / name)
    config = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": MAX_TOKENS,
        "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>",
        "do_lower_case": True,
        "errors": "replace",
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    special = {k: config[k] for k in ("bos_token", "eos_token", "unk_token", "pad_token")}
    (folder / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")


def load_pipeline(folder: Path | None = None, *, device: str = "cpu") -> Any:
    """The shipped (or given) demo pipeline in fp32, offline."""
    import torch
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(
        str(folder or WEIGHTS_DIR), dtype=torch.float32, local_files_only=True
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)
