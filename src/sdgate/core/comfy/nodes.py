"""The ComfyUI node types sdgate runs, as data: their inputs, types, defaults, ranges and outputs.

Names, defaults, ranges, display names, categories, descriptions and tooltips are ComfyUI's own
(``nodes.py`` and ``comfy_extras/nodes_upscale_model.py`` at 0.3.64, ``reference/other_apis.md``
§1.8): clients build graphs from ``/object_info`` and scripts hard-code these names, so they are
wire facts. ``validate`` checks graphs against these specs; ``engine/comfy`` runs them.

A COMBO input lists its values either fixed (``options`` a tuple) or by the name of a list known
only at request time (``options`` one of ``DYNAMIC_LISTS``: the model files, the uploaded images,
the samplers and schedulers we run). ``sampler_for`` turns ComfyUI's sampler and scheduler names
into ours (``core/samplers.py``); only the pairs we can really run are listed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

MAX_RESOLUTION = 16384  # ComfyUI's nodes.MAX_RESOLUTION
MAX_SEED = 0xFFFFFFFFFFFFFFFF

WIDGET_TYPES = frozenset({"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"})
LINK_TYPES = frozenset(
    {"MODEL", "CLIP", "VAE", "CONDITIONING", "LATENT", "IMAGE", "MASK", "UPSCALE_MODEL", "CONTROL_NET"}
)
# Names a COMBO's ``options`` may give instead of fixed values (``validate.Choices`` fields, and ours).
DYNAMIC_LISTS = (
    "checkpoints", "loras", "vae", "upscale_models", "controlnet", "input_images", "samplers", "schedulers",
)  # fmt: skip
# The nodes that put a ControlNet on conditioning (``GraphLimits.max_controlnets`` counts them).
CONTROLNET_APPLY = ("ControlNetApply", "ControlNetApplyAdvanced")


@dataclass(frozen=True)
class InputSpec:
    name: str
    type: str  # "INT" | "FLOAT" | "STRING" | "BOOLEAN" | "COMBO" | a link type (LINK_TYPES)
    required: bool = True
    default: Any = None
    min: float | None = None
    max: float | None = None
    step: float | None = None
    round: float | None = None
    options: tuple[str, ...] | str | None = None  # COMBO: fixed values, or a DYNAMIC_LISTS name
    extra: Mapping[str, Any] = field(default_factory=dict)  # tooltip, multiline, image_upload, ...

    @property
    def is_link(self) -> bool:
        return self.type in LINK_TYPES


@dataclass(frozen=True)
class NodeSpec:
    class_type: str
    display_name: str
    category: str
    description: str
    inputs: tuple[InputSpec, ...]
    outputs: tuple[str, ...]
    output_names: tuple[str, ...]
    output_node: bool = False
    output_tooltips: tuple[str, ...] = ()  # ComfyUI's OUTPUT_TOOLTIPS, where it has them
    hidden: Mapping[str, str] = field(default_factory=dict)  # e.g. {"prompt": "PROMPT"}
    python_module: str = "nodes"
    deprecated: bool = False  # ComfyUI's DEPRECATED: object_info says so; the node still runs

    def input(self, name: str) -> InputSpec | None:
        for spec in self.inputs:
            if spec.name == name:
                return spec
        return None


# ComfyUI's KSampler.SAMPLERS order, keeping the ones we run, and the A1111 sampler each one is.
# Left out (a client naming one gets value_not_in_list): the *_cfg_pp variants, heunpp2, ddpm,
# ipndm(_v), deis, res_multistep*, gradient_estimation*, er_sde, seeds_2/3, sa_solver*, uni_pc_bh2
# (our UniPC is bh1): none has a sampler of ours that draws the same thing.
_SAMPLER_MAP: Mapping[str, str] = MappingProxyType(
    {
        "euler": "Euler",
        "euler_ancestral": "Euler a",
        "heun": "Heun",
        "dpm_2": "DPM2",
        "dpm_2_ancestral": "DPM2 a",
        "lms": "LMS",
        "dpm_fast": "DPM fast",
        "dpm_adaptive": "DPM adaptive",
        "dpmpp_2s_ancestral": "DPM++ 2S a",
        "dpmpp_sde": "DPM++ SDE",
        "dpmpp_sde_gpu": "DPM++ SDE",  # the same sampler, its noise drawn on the GPU
        "dpmpp_2m": "DPM++ 2M",
        "dpmpp_2m_sde": "DPM++ 2M SDE",
        "dpmpp_2m_sde_gpu": "DPM++ 2M SDE",
        "dpmpp_2m_sde_heun": "DPM++ 2M SDE Heun",
        "dpmpp_2m_sde_heun_gpu": "DPM++ 2M SDE Heun",
        "dpmpp_3m_sde": "DPM++ 3M SDE",
        "dpmpp_3m_sde_gpu": "DPM++ 3M SDE",
        "lcm": "LCM",
        "ddim": "DDIM",
        "uni_pc": "UniPC",
    }
)
# ComfyUI's SCHEDULER_NAMES order, keeping the ones we run (linear_quadratic has no equivalent).
_SCHEDULER_MAP: Mapping[str, str] = MappingProxyType(
    {
        "simple": "simple",
        "sgm_uniform": "sgm_uniform",
        "karras": "karras",
        "exponential": "exponential",
        "ddim_uniform": "ddim",
        "beta": "beta",
        "normal": "normal",
        "kl_optimal": "kl_optimal",
    }
)

SAMPLERS: tuple[str, ...] = tuple(_SAMPLER_MAP)
SCHEDULERS: tuple[str, ...] = tuple(_SCHEDULER_MAP)


def sampler_for(sampler_name: str, scheduler: str) -> tuple[str, str]:
    """Our (A1111 sampler, scheduler) names for ComfyUI's ``sampler_name`` and ``scheduler``.

    KeyError for a name not in ``SAMPLERS`` / ``SCHEDULERS`` (validation refuses those first)."""
    return _SAMPLER_MAP[sampler_name], _SCHEDULER_MAP[scheduler]


# --- spec builders: short names keep the table below readable --------------------------------


def _link(name: str, type_: str, tooltip: str | None = None) -> InputSpec:
    return InputSpec(name, type_, extra=_tip(tooltip))


def _int(name: str, default: int, lo: int, hi: int, step: int | None = None, **extra: Any) -> InputSpec:
    return InputSpec(name, "INT", default=default, min=lo, max=hi, step=step, extra=_frozen(extra))


def _float(
    name: str,
    default: float,
    lo: float,
    hi: float,
    step: float | None = None,
    rnd: float | None = None,
    **extra: Any,
) -> InputSpec:
    return InputSpec(
        name, "FLOAT", default=default, min=lo, max=hi, step=step, round=rnd, extra=_frozen(extra)
    )


def _combo(name: str, options: tuple[str, ...] | str, **extra: Any) -> InputSpec:
    default = options[0] if isinstance(options, tuple) and options else None
    return InputSpec(name, "COMBO", default=default, options=options, extra=_frozen(extra))


def _tip(tooltip: str | None) -> Mapping[str, Any]:
    return _frozen({"tooltip": tooltip} if tooltip else {})


def _frozen(values: Mapping[str, Any]) -> Mapping[str, Any]:
    return MappingProxyType(dict(values))


_SAVE_HIDDEN = MappingProxyType({"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"})
_IMAGE_METHODS = ("nearest-exact", "bilinear", "area", "bicubic", "lanczos")
_LATENT_METHODS = ("nearest-exact", "bilinear", "area", "bicubic", "bislerp")
_CROP = ("disabled", "center")
_SAVE_DESCRIPTION = "Saves the input images to your ComfyUI output directory."

_KS_TIPS = {
    "model": "The model used for denoising the input latent.",
    "seed": "The random seed used for creating the noise.",
    "steps": "The number of steps used in the denoising process.",
    "cfg": "The Classifier-Free Guidance scale balances creativity and adherence to the prompt. Higher "
    "values result in images more closely matching the prompt however too high values will negatively "
    "impact quality.",
    "sampler_name": "The algorithm used when sampling, this can affect the quality, speed, and style of the "
    "generated output.",
    "scheduler": "The scheduler controls how noise is gradually removed to form the image.",
    "positive": "The conditioning describing the attributes you want to include in the image.",
    "negative": "The conditioning describing the attributes you want to exclude from the image.",
    "latent_image": "The latent image to denoise.",
    "denoise": "The amount of denoising applied, lower values will maintain the structure of the initial "
    "image allowing for image to image sampling.",
}

_CONTROLNET_STRENGTH = _float("strength", 1.0, 0.0, 10.0, 0.01)

_EMPTY_TIPS = {
    "width": "The width of the latent images in pixels.",
    "height": "The height of the latent images in pixels.",
}


def _specs() -> tuple[NodeSpec, ...]:
    return (
        NodeSpec(
            "CheckpointLoaderSimple",
            "Load Checkpoint",
            "loaders",
            "Loads a diffusion model checkpoint, diffusion models are used to denoise latents.",
            (_combo("ckpt_name", "checkpoints", tooltip="The name of the checkpoint (model) to load."),),
            ("MODEL", "CLIP", "VAE"),
            ("MODEL", "CLIP", "VAE"),
            output_tooltips=(
                "The model used for denoising latents.",
                "The CLIP model used for encoding text prompts.",
                "The VAE model used for encoding and decoding images to and from latent space.",
            ),
        ),
        NodeSpec(
            "CLIPTextEncode",
            "CLIP Text Encode (Prompt)",
            "conditioning",
            "Encodes a text prompt using a CLIP model into an embedding that can be used to guide the "
            "diffusion model towards generating specific images.",
            (
                InputSpec(
                    "text",
                    "STRING",
                    extra=_frozen(
                        {"multiline": True, "dynamicPrompts": True, "tooltip": "The text to be encoded."}
                    ),
                ),
                _link("clip", "CLIP", "The CLIP model used for encoding the text."),
            ),
            ("CONDITIONING",),
            ("CONDITIONING",),
            output_tooltips=(
                "A conditioning containing the embedded text used to guide the diffusion model.",
            ),
        ),
        NodeSpec(
            "CLIPSetLastLayer",
            "CLIP Set Last Layer",
            "conditioning",
            "",
            (_link("clip", "CLIP"), _int("stop_at_clip_layer", -1, -24, -1, 1)),
            ("CLIP",),
            ("CLIP",),
        ),
        NodeSpec(
            "EmptyLatentImage",
            "Empty Latent Image",
            "latent",
            "Create a new batch of empty latent images to be denoised via sampling.",
            (
                _int("width", 512, 16, MAX_RESOLUTION, 8, tooltip=_EMPTY_TIPS["width"]),
                _int("height", 512, 16, MAX_RESOLUTION, 8, tooltip=_EMPTY_TIPS["height"]),
                _int("batch_size", 1, 1, 4096, tooltip="The number of latent images in the batch."),
            ),
            ("LATENT",),
            ("LATENT",),
            output_tooltips=("The empty latent image batch.",),
        ),
        NodeSpec(
            "KSampler",
            "KSampler",
            "sampling",
            "Uses the provided model, positive and negative conditioning to denoise the latent image.",
            (
                _link("model", "MODEL", _KS_TIPS["model"]),
                _int("seed", 0, 0, MAX_SEED, control_after_generate=True, tooltip=_KS_TIPS["seed"]),
                _int("steps", 20, 1, 10000, tooltip=_KS_TIPS["steps"]),
                _float("cfg", 8.0, 0.0, 100.0, 0.1, 0.01, tooltip=_KS_TIPS["cfg"]),
                _combo("sampler_name", "samplers", tooltip=_KS_TIPS["sampler_name"]),
                _combo("scheduler", "schedulers", tooltip=_KS_TIPS["scheduler"]),
                _link("positive", "CONDITIONING", _KS_TIPS["positive"]),
                _link("negative", "CONDITIONING", _KS_TIPS["negative"]),
                _link("latent_image", "LATENT", _KS_TIPS["latent_image"]),
                _float("denoise", 1.0, 0.0, 1.0, 0.01, tooltip=_KS_TIPS["denoise"]),
            ),
            ("LATENT",),
            ("LATENT",),
            output_tooltips=("The denoised latent.",),
        ),
        NodeSpec(
            "KSamplerAdvanced",
            "KSampler (Advanced)",
            "sampling",
            "",
            (
                _link("model", "MODEL"),
                _combo("add_noise", ("enable", "disable")),
                _int("noise_seed", 0, 0, MAX_SEED, control_after_generate=True),
                _int("steps", 20, 1, 10000),
                _float("cfg", 8.0, 0.0, 100.0, 0.1, 0.01),
                _combo("sampler_name", "samplers"),
                _combo("scheduler", "schedulers"),
                _link("positive", "CONDITIONING"),
                _link("negative", "CONDITIONING"),
                _link("latent_image", "LATENT"),
                _int("start_at_step", 0, 0, 10000),
                _int("end_at_step", 10000, 0, 10000),
                _combo("return_with_leftover_noise", ("disable", "enable")),
            ),
            ("LATENT",),
            ("LATENT",),
        ),
        NodeSpec(
            "VAEDecode",
            "VAE Decode",
            "latent",
            "Decodes latent images back into pixel space images.",
            (
                _link("samples", "LATENT", "The latent to be decoded."),
                _link("vae", "VAE", "The VAE model used for decoding the latent."),
            ),
            ("IMAGE",),
            ("IMAGE",),
            output_tooltips=("The decoded image.",),
        ),
        NodeSpec(
            "VAEEncode",
            "VAE Encode",
            "latent",
            "",
            (_link("pixels", "IMAGE"), _link("vae", "VAE")),
            ("LATENT",),
            ("LATENT",),
        ),
        NodeSpec(
            "VAEEncodeForInpaint",
            "VAE Encode (for Inpainting)",
            "latent/inpaint",
            "",
            (
                _link("pixels", "IMAGE"),
                _link("vae", "VAE"),
                _link("mask", "MASK"),
                _int("grow_mask_by", 6, 0, 64, 1),
            ),
            ("LATENT",),
            ("LATENT",),
        ),
        NodeSpec(
            "SetLatentNoiseMask",
            "Set Latent Noise Mask",
            "latent/inpaint",
            "",
            (_link("samples", "LATENT"), _link("mask", "MASK")),
            ("LATENT",),
            ("LATENT",),
        ),
        NodeSpec(
            "LoadImage",
            "Load Image",
            "image",
            "",
            (_combo("image", "input_images", image_upload=True),),
            ("IMAGE", "MASK"),
            ("IMAGE", "MASK"),
        ),
        NodeSpec(
            "LoadImageMask",
            "Load Image (as Mask)",
            "mask",
            "",
            (
                _combo("image", "input_images", image_upload=True),
                _combo("channel", ("alpha", "red", "green", "blue")),
            ),
            ("MASK",),
            ("MASK",),
        ),
        NodeSpec(
            "ImageScale",
            "Upscale Image",
            "image/upscaling",
            "",
            (
                _link("image", "IMAGE"),
                _combo("upscale_method", _IMAGE_METHODS),
                _int("width", 512, 0, MAX_RESOLUTION, 1),
                _int("height", 512, 0, MAX_RESOLUTION, 1),
                _combo("crop", _CROP),
            ),
            ("IMAGE",),
            ("IMAGE",),
        ),
        NodeSpec(
            "ImageScaleBy",
            "Upscale Image By",
            "image/upscaling",
            "",
            (
                _link("image", "IMAGE"),
                _combo("upscale_method", _IMAGE_METHODS),
                _float("scale_by", 1.0, 0.01, 8.0, 0.01),
            ),
            ("IMAGE",),
            ("IMAGE",),
        ),
        NodeSpec(
            "LatentUpscale",
            "Upscale Latent",
            "latent",
            "",
            (
                _link("samples", "LATENT"),
                _combo("upscale_method", _LATENT_METHODS),
                _int("width", 512, 0, MAX_RESOLUTION, 8),
                _int("height", 512, 0, MAX_RESOLUTION, 8),
                _combo("crop", _CROP),
            ),
            ("LATENT",),
            ("LATENT",),
        ),
        NodeSpec(
            "LatentUpscaleBy",
            "Upscale Latent By",
            "latent",
            "",
            (
                _link("samples", "LATENT"),
                _combo("upscale_method", _LATENT_METHODS),
                _float("scale_by", 1.5, 0.01, 8.0, 0.01),
            ),
            ("LATENT",),
            ("LATENT",),
        ),
        NodeSpec(
            "LoraLoader",
            "Load LoRA",
            "loaders",
            "LoRAs are used to modify diffusion and CLIP models, altering the way in which latents are "
            "denoised such as applying styles. Multiple LoRA nodes can be linked together.",
            (
                _link("model", "MODEL", "The diffusion model the LoRA will be applied to."),
                _link("clip", "CLIP", "The CLIP model the LoRA will be applied to."),
                _combo("lora_name", "loras", tooltip="The name of the LoRA."),
                _float(
                    "strength_model",
                    1.0,
                    -100.0,
                    100.0,
                    0.01,
                    tooltip="How strongly to modify the diffusion model. This value can be negative.",
                ),
                _float(
                    "strength_clip",
                    1.0,
                    -100.0,
                    100.0,
                    0.01,
                    tooltip="How strongly to modify the CLIP model. This value can be negative.",
                ),
            ),
            ("MODEL", "CLIP"),
            ("MODEL", "CLIP"),
            output_tooltips=("The modified diffusion model.", "The modified CLIP model."),
        ),
        NodeSpec(
            "LoraLoaderModelOnly",
            "LoraLoaderModelOnly",
            "loaders",
            "",
            (
                _link("model", "MODEL"),
                _combo("lora_name", "loras"),
                _float("strength_model", 1.0, -100.0, 100.0, 0.01),
            ),
            ("MODEL",),
            ("MODEL",),
        ),
        NodeSpec(
            "VAELoader",
            "Load VAE",
            "loaders",
            "",
            (_combo("vae_name", "vae"),),
            ("VAE",),
            ("VAE",),
        ),
        NodeSpec(
            "UpscaleModelLoader",
            "Load Upscale Model",
            "loaders",
            "",
            (_combo("model_name", "upscale_models"),),
            ("UPSCALE_MODEL",),
            ("UPSCALE_MODEL",),
            python_module="comfy_extras.nodes_upscale_model",
        ),
        NodeSpec(
            "ImageUpscaleWithModel",
            "Upscale Image (using Model)",
            "image/upscaling",
            "",
            (_link("upscale_model", "UPSCALE_MODEL"), _link("image", "IMAGE")),
            ("IMAGE",),
            ("IMAGE",),
            python_module="comfy_extras.nodes_upscale_model",
        ),
        NodeSpec(
            "SaveImage",
            "Save Image",
            "image",
            _SAVE_DESCRIPTION,
            (
                _link("images", "IMAGE", "The images to save."),
                InputSpec(
                    "filename_prefix",
                    "STRING",
                    default="ComfyUI",
                    extra=_tip(
                        "The prefix for the file to save. This may include formatting information such as "
                        "%date:yyyy-MM-dd% or %Empty Latent Image.width% to include values from nodes."
                    ),
                ),
            ),
            (),
            (),
            output_node=True,
            hidden=_SAVE_HIDDEN,
        ),
        NodeSpec(
            "PreviewImage",
            "Preview Image",
            "image",
            _SAVE_DESCRIPTION,
            (_link("images", "IMAGE"),),
            (),
            (),
            output_node=True,
            hidden=_SAVE_HIDDEN,
        ),
        NodeSpec(
            "ControlNetLoader",
            "Load ControlNet Model",
            "loaders",
            "",
            (_combo("control_net_name", "controlnet"),),
            ("CONTROL_NET",),
            ("CONTROL_NET",),
        ),
        NodeSpec(
            "ControlNetApply",
            "Apply ControlNet (OLD)",
            "conditioning/controlnet",
            "",
            (
                _link("conditioning", "CONDITIONING"),
                _link("control_net", "CONTROL_NET"),
                _link("image", "IMAGE"),
                _CONTROLNET_STRENGTH,
            ),
            ("CONDITIONING",),
            ("CONDITIONING",),
            deprecated=True,
        ),
        NodeSpec(
            "ControlNetApplyAdvanced",
            "Apply ControlNet",
            "conditioning/controlnet",
            "",
            (
                _link("positive", "CONDITIONING"),
                _link("negative", "CONDITIONING"),
                _link("control_net", "CONTROL_NET"),
                _link("image", "IMAGE"),
                _CONTROLNET_STRENGTH,
                _float("start_percent", 0.0, 0.0, 1.0, 0.001),
                _float("end_percent", 1.0, 0.0, 1.0, 0.001),
                InputSpec("vae", "VAE", required=False),
            ),
            ("CONDITIONING", "CONDITIONING"),
            ("positive", "negative"),
        ),
        NodeSpec(
            "ConditioningCombine",
            "Conditioning (Combine)",
            "conditioning",
            "",
            (_link("conditioning_1", "CONDITIONING"), _link("conditioning_2", "CONDITIONING")),
            ("CONDITIONING",),
            ("CONDITIONING",),
        ),
        NodeSpec(
            "ConditioningSetArea",
            "Conditioning (Set Area)",
            "conditioning",
            "",
            (
                _link("conditioning", "CONDITIONING"),
                _int("width", 64, 64, MAX_RESOLUTION, 8),
                _int("height", 64, 64, MAX_RESOLUTION, 8),
                _int("x", 0, 0, MAX_RESOLUTION, 8),
                _int("y", 0, 0, MAX_RESOLUTION, 8),
                _float("strength", 1.0, 0.0, 10.0, 0.01),
            ),
            ("CONDITIONING",),
            ("CONDITIONING",),
        ),
    )


NODES: Mapping[str, NodeSpec] = MappingProxyType({spec.class_type: spec for spec in _specs()})
