"""Turning a catalog entry into a ready diffusers pipeline, fully offline.

Diffusers folders load with ``from_pretrained(local_files_only=True)``. Single files
(``.safetensors``, ``.ckpt``) are read as a state dict, their component configs are derived from
tensor shapes (``engine.configs``), and diffusers' own LDM conversion functions map the keys; the
modules are built on the meta device and take the checkpoint's tensors as they are, so a 7 GB
SDXL file is never initialised randomly first. No code path here can reach the network.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import init_empty_weights
from diffusers import AutoencoderKL, EulerDiscreteScheduler, UNet2DConditionModel
from diffusers.loaders.single_file_utils import (
    convert_ldm_clip_checkpoint,
    convert_ldm_unet_checkpoint,
    convert_ldm_vae_checkpoint,
    convert_open_clip_checkpoint,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from sdgate.core.models import Family, ModelInfo, detect_family
from sdgate.engine import configs as cfgs
from sdgate.engine.pipelines import PIPELINES, SDPipeline, SDXLPipeline

log = logging.getLogger("sdgate.engine")

TOKENIZER_DIR = Path(__file__).resolve().parent.parent / "assets" / "tokenizer"
StateDict = dict[str, torch.Tensor]


class UnsupportedModel(ValueError):
    """The model is not an SD 1.x / 2.x / XL text-to-image model this engine can run."""


@dataclass
class LoadedPipeline:
    pipeline: Any  # StableDiffusionPipeline | StableDiffusionXLPipeline
    family: Family | None
    v_prediction: bool
    vae_scale_factor: int
    native_size: int
    check_v_prediction: bool = False  # SD 2.x single file without a .yaml: test once on the device


# --- state dicts ----------------------------------------------------------------------------------


def read_state_dict(path: Path) -> StateDict:
    """All tensors of a checkpoint on the CPU; ``.ckpt`` only through the weights-only unpickler."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except Exception as exc:  # safetensors' own error type is not public API
            raise UnsupportedModel(f"{path.name} is not a readable safetensors file: {exc}") from exc
    try:
        data = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError, ... for foreign pickles
        raise UnsupportedModel(
            f"{path.name} holds more than tensors, which sdgate does not unpickle; convert it to "
            f".safetensors ({exc.__class__.__name__})"
        ) from exc
    if isinstance(data, dict) and isinstance(data.get("state_dict"), dict):
        data = data["state_dict"]
    return {k: v for k, v in data.items() if isinstance(v, torch.Tensor)}


def materialize(module_factory: Any, state: StateDict, what: str, dtype: torch.dtype) -> Any:
    """Build a module without allocating weights, then adopt the checkpoint's tensors (in ``dtype``:
    casting here, not with ``.to()`` later, keeps diffusers' own dtype rules out of the way)."""
    with init_empty_weights():
        module = module_factory()
    expected = module.state_dict()
    if any(k.startswith("text_model.") for k in expected):  # transformers < 5.6 nests CLIP under it
        state = {
            k if k.startswith(("text_model.", "text_projection.")) else f"text_model.{k}": v
            for k, v in state.items()
        }
    missing = [k for k in expected if k not in state]
    if missing:
        raise UnsupportedModel(f"{what}: lacks {len(missing)} tensors the model needs, e.g. {missing[:3]}")
    wrong = [k for k in expected if tuple(state[k].shape) != tuple(expected[k].shape)]
    if wrong:
        raise UnsupportedModel(f"{what}: does not fit (tensor shapes differ, e.g. {wrong[:3]})")
    module.load_state_dict({k: state[k].to(dtype) for k in expected}, strict=True, assign=True)
    return module.eval()


# --- single files ---------------------------------------------------------------------------------


def _text_encoder(
    state: StateDict, family: Family, config: dict[str, Any], dtype: torch.dtype, second: bool = False
) -> Any:
    conf = CLIPTextConfig(**{k: v for k, v in config.items() if not k.startswith("_")})
    if family == "sd1" or (family == "sdxl" and not second):
        converted = _flat(convert_ldm_clip_checkpoint(state))
        return materialize(lambda: CLIPTextModel(conf), converted, "text encoder", dtype)
    if family == "sd2":
        prefix = cfgs.SD2_OPENCLIP
        last = f"{prefix}transformer.resblocks.{conf.num_hidden_layers}."
        state = {k: v for k, v in state.items() if not k.startswith(last)}  # the unused last layer
        with init_empty_weights():
            shell: Any = CLIPTextModel(conf)
        converted = _flat(convert_open_clip_checkpoint(shell, state, prefix=prefix))
        converted.pop("text_projection.weight", None)
        return materialize(lambda: CLIPTextModel(conf), converted, "text encoder", dtype)
    with init_empty_weights():
        shell = CLIPTextModelWithProjection(conf)
    converted = _flat(convert_open_clip_checkpoint(shell, state, prefix=cfgs.XL_OPENCLIP))
    return materialize(lambda: CLIPTextModelWithProjection(conf), converted, "text encoder 2", dtype)


def _flat(state: StateDict) -> StateDict:
    """CLIP keys without the ``text_model.`` level (``materialize`` adds it back where needed)."""
    return {k.removeprefix("text_model."): v for k, v in state.items()}


def _tokenizer(config: dict[str, Any]) -> CLIPTokenizer:
    kwargs = {k: v for k, v in config.items() if k not in ("tokenizer_class",) and not k.startswith("_")}
    return CLIPTokenizer(str(TOKENIZER_DIR / "vocab.json"), str(TOKENIZER_DIR / "merges.txt"), **kwargs)


def _unet(state: StateDict, config: dict[str, Any], dtype: torch.dtype) -> Any:
    converted = convert_ldm_unet_checkpoint(state, config)
    return materialize(lambda: UNet2DConditionModel.from_config(config), converted, "UNet", dtype)


def is_v_prediction(unet: Any) -> bool:
    """A1111's test for SD 2.x 768-v checkpoints, which no tensor shape gives away.

    Run the UNet once on a constant input at t=999: a v-prediction model's output sits far below
    the input (mean difference < -1), an epsilon model's does not.
    """
    param = next(unet.parameters())
    x = torch.full((1, unet.config.in_channels, 8, 8), 0.5, device=param.device, dtype=param.dtype)
    cond = torch.full((1, 2, unet.config.cross_attention_dim), 0.5, device=param.device, dtype=param.dtype)
    with torch.no_grad():
        out = unet(x, torch.tensor([999], device=param.device), encoder_hidden_states=cond).sample
    return bool((out.float() - x.float()).mean().item() < -1)


def load_single_file(info: ModelInfo, dtype: torch.dtype, vae_dtype: torch.dtype) -> LoadedPipeline:
    """A ``.safetensors``/``.ckpt`` in the LDM layout -> a pipeline on the CPU."""
    if info.family is None:  # known from the header already: do not read gigabytes to find out
        raise UnsupportedModel(f"{info.filename.name} is not an SD 1.x, 2.x or XL checkpoint")
    state = read_state_dict(info.filename)
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    family = detect_family(shapes)
    if family is None:
        raise UnsupportedModel(f"{info.filename.name} is not an SD 1.x, 2.x or XL checkpoint")
    configs = cfgs.component_configs(shapes, family, v_prediction=info.v_prediction)
    unet = _unet(state, configs["unet"], dtype)
    vae = materialize(
        lambda: AutoencoderKL.from_config(configs["vae"]),
        convert_ldm_vae_checkpoint(state, configs["vae"]),
        "VAE",
        vae_dtype,
    )
    scheduler = EulerDiscreteScheduler.from_config(configs["scheduler"])
    parts = dict(
        unet=unet,
        vae=vae,
        scheduler=scheduler,
        text_encoder=_text_encoder(state, family, configs["text_encoder"], dtype),
        tokenizer=_tokenizer(configs["tokenizer"]),
    )
    if family == "sdxl":
        pipe: Any = SDXLPipeline(
            **parts,
            text_encoder_2=_text_encoder(state, family, configs["text_encoder_2"], dtype, second=True),
            tokenizer_2=_tokenizer(configs["tokenizer_2"]),
            force_zeros_for_empty_prompt=configs["model_index"].get("force_zeros_for_empty_prompt", True),
            add_watermarker=False,
        )
    else:
        pipe = SDPipeline(**parts, safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    factor = 2 ** (len(configs["vae"]["block_out_channels"]) - 1)
    check = family == "sd2" and info.config is None
    return LoadedPipeline(pipe, family, info.v_prediction, factor, cfgs.native_size_of(configs), check)


# --- diffusers folders ----------------------------------------------------------------------------


def load_diffusers_folder(info: ModelInfo, dtype: torch.dtype, vae_dtype: torch.dtype) -> LoadedPipeline:
    folder = info.filename
    index = json.loads((folder / "model_index.json").read_text(encoding="utf-8"))
    cls_name = index.get("_class_name")
    if cls_name not in PIPELINES:
        raise UnsupportedModel(f"{folder.name}: {cls_name} is not a text-to-image SD pipeline sdgate runs")
    kwargs: dict[str, Any] = {}
    if cls_name == "StableDiffusionPipeline":
        kwargs.update(safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    else:
        kwargs.update(add_watermarker=False)
    if vae_dtype != dtype:
        kwargs["vae"] = AutoencoderKL.from_pretrained(
            str(folder / "vae"), dtype=vae_dtype, local_files_only=True
        )
    for name, pad in (("tokenizer", "<|endoftext|>"), ("tokenizer_2", "!")):
        if name in index and not (folder / name).is_dir():
            kwargs[name] = _tokenizer({"pad_token": pad, "model_max_length": 77})
    pipe = PIPELINES[cls_name].from_pretrained(str(folder), dtype=dtype, local_files_only=True, **kwargs)
    factor = 2 ** (len(pipe.vae.config.block_out_channels) - 1)
    v_pred = pipe.scheduler.config.get("prediction_type") == "v_prediction"
    return LoadedPipeline(pipe, info.family, v_pred, factor, int(pipe.unet.config.sample_size) * factor)


def load_pipeline(
    info: ModelInfo, *, device: torch.device, dtype: torch.dtype, vae_dtype: torch.dtype
) -> LoadedPipeline:
    """Load ``info`` onto ``device``: weights in ``dtype``, the VAE in ``vae_dtype``."""
    if info.format == "diffusers":
        loaded = load_diffusers_folder(info, dtype, vae_dtype)
    else:
        loaded = load_single_file(info, dtype, vae_dtype)
    pipe = loaded.pipeline
    pipe.set_progress_bar_config(disable=True)
    pipe.to(device)
    if loaded.check_v_prediction and is_v_prediction(pipe.unet):
        log.info("%s: v-prediction detected (SD 2.x 768-v)", info.name)
        _use_v_prediction(loaded)
    return loaded


def _use_v_prediction(loaded: LoadedPipeline) -> None:
    """Switch a pipeline built with SD 2.x epsilon configs to the 768-v ones (only the noise
    schedule and the native size differ; the weights are the same)."""
    v_configs = cfgs.shipped_configs(cfgs.config_key("sd2", True))
    pipe = loaded.pipeline
    pipe.scheduler = EulerDiscreteScheduler.from_config(
        pipe.scheduler.config, prediction_type=v_configs["scheduler"]["prediction_type"]
    )
    loaded.v_prediction = True
    loaded.native_size = cfgs.native_size_of(v_configs)


def pipeline_bytes(pipe: Any) -> int:
    """Bytes of all weights and buffers of a pipeline's torch modules (what the cache budgets)."""
    total = 0
    for component in pipe.components.values():
        if isinstance(component, torch.nn.Module):
            total += sum(t.numel() * t.element_size() for t in component.parameters())
            total += sum(t.numel() * t.element_size() for t in component.buffers())
    return total
