"""ComfyUI workflows built in code: the graph for one txt2img / img2img / inpaint request.

The A1111-style fields that ComfyUI's core nodes can express become nodes: ``loras`` a chain of
``LoraLoader``, ``vae`` a ``VAELoader``, ``clip_skip`` a ``CLIPSetLastLayer``, a latent ``hires``
fix a ``LatentUpscale(By)`` and a second ``KSampler``. The backend (``comfyui.py``) submits and
follows what this builds.
"""

from __future__ import annotations

from typing import Any

from sdgate.client._types import Hires, ImageRequest, Lora

SAMPLERS = {  # A1111 name -> ComfyUI sampler_name
    "Euler": "euler",
    "Euler a": "euler_ancestral",
    "Heun": "heun",
    "DPM2": "dpm_2",
    "DPM2 a": "dpm_2_ancestral",
    "LMS": "lms",
    "DPM fast": "dpm_fast",
    "DPM adaptive": "dpm_adaptive",
    "DPM++ 2S a": "dpmpp_2s_ancestral",
    "DPM++ SDE": "dpmpp_sde",
    "DPM++ 2M": "dpmpp_2m",
    "DPM++ 2M SDE": "dpmpp_2m_sde",
    "DPM++ 2M SDE Heun": "dpmpp_2m_sde_heun",
    "DPM++ 3M SDE": "dpmpp_3m_sde",
    "DDPM": "ddpm",
    "LCM": "lcm",
    "DDIM": "ddim",
    "UniPC": "uni_pc",
    "Restart": "euler",
}
SCHEDULERS = {  # A1111 schedule type (lower case) -> ComfyUI scheduler
    "automatic": "normal",
    "normal": "normal",
    "karras": "karras",
    "exponential": "exponential",
    "sgm uniform": "sgm_uniform",
    "sgm_uniform": "sgm_uniform",
    "simple": "simple",
    "beta": "beta",
    "uniform": "normal",
    "ddim": "ddim_uniform",
    "kl optimal": "kl_optimal",
    "kl_optimal": "kl_optimal",
}
# A1111's latent hires upscalers -> LatentUpscale's upscale_method. ComfyUI has no plain "nearest"
# nor antialiasing; antialiasing only acts when shrinking, so for a hires fix (which enlarges) the
# antialiased modes draw the same as the plain ones.
LATENT_UPSCALERS = {
    "latent": "bilinear",
    "latent (antialiased)": "bilinear",
    "latent (bicubic)": "bicubic",
    "latent (bicubic antialiased)": "bicubic",
    "latent (nearest)": "nearest-exact",
    "latent (nearest-exact)": "nearest-exact",
}
MODEL_EXTENSIONS = (".safetensors", ".sft", ".ckpt", ".pt", ".pth", ".bin")
VAE_OF_CHECKPOINT = {"", "automatic", "none"}  # A1111's names for "the checkpoint's own VAE"
DEFAULTS = {"width": 512, "height": 512, "steps": 20, "cfg": 7.0}
FIRST_PASS, HIRES_PASS = "3", "14"  # the KSampler node ids, in the order they run
LORA_NODE_BASE = 100  # LoraLoader i is node str(100 + i)


def model_file(name: str) -> str:
    """A file name as ComfyUI's loaders list it: A1111-style bare names get ``.safetensors``."""
    return name if name.lower().endswith(MODEL_EXTENSIONS) else f"{name}.safetensors"


def latent_upscale_method(hires: Hires) -> str | None:
    """``upscale_method`` for a latent hires upscaler; ``None`` for an image upscaler (ESRGAN...)."""
    return LATENT_UPSCALERS.get(hires.upscaler.strip().lower())


def hires_applies(request: ImageRequest) -> bool:
    return (
        request.hires is not None
        and request.mode == "txt2img"
        and latent_upscale_method(request.hires) is not None
    )


def build_workflow(
    request: ImageRequest, *, ckpt_name: str, seed: int, image_name: str | None = None
) -> dict:
    """The API-format graph (node ids as in ComfyUI's own script examples, extras numbered on)."""
    graph: dict[str, dict[str, Any]] = {
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt_name}},
    }
    model, clip, vae = _loaders(graph, request)
    graph["6"] = _encode(request.prompt, clip)
    graph["7"] = _encode(request.negative_prompt, clip)
    latent, denoise = _start_latent(graph, request, vae, image_name)
    sampler = {
        "seed": seed,
        "steps": request.steps or DEFAULTS["steps"],
        "cfg": request.cfg_scale if request.cfg_scale is not None else DEFAULTS["cfg"],
        "sampler_name": SAMPLERS.get(request.sampler or "Euler", "euler"),
        "scheduler": SCHEDULERS.get((request.scheduler or "automatic").lower(), "normal"),
        "denoise": denoise,
        "model": model,
        "positive": ["6", 0],
        "negative": ["7", 0],
        "latent_image": latent,
    }
    graph[FIRST_PASS] = {"class_type": "KSampler", "inputs": sampler}
    samples = [FIRST_PASS, 0]
    if request.hires is not None and hires_applies(request):
        samples = _hires_pass(graph, request.hires, sampler, clip, samples)
    graph["8"] = {"class_type": "VAEDecode", "inputs": {"samples": samples, "vae": vae}}
    graph["9"] = {"class_type": "SaveImage", "inputs": {"filename_prefix": "sdgate", "images": ["8", 0]}}
    return graph


def _encode(text: str, clip: list[Any]) -> dict[str, Any]:
    return {"class_type": "CLIPTextEncode", "inputs": {"text": text, "clip": clip}}


def _loaders(graph: dict[str, dict[str, Any]], request: ImageRequest) -> tuple[list[Any], ...]:
    """Checkpoint -> LoRA chain -> CLIP skip, and the VAE: the (model, clip, vae) links to use."""
    model: list[Any] = ["4", 0]
    clip: list[Any] = ["4", 1]
    vae: list[Any] = ["4", 2]
    for i, lora in enumerate(request.loras):
        node = str(LORA_NODE_BASE + i)
        graph[node] = {"class_type": "LoraLoader", "inputs": _lora_inputs(lora, model, clip)}
        model, clip = [node, 0], [node, 1]
    if request.clip_skip is not None and request.clip_skip > 1:
        graph["15"] = {
            "class_type": "CLIPSetLastLayer",
            "inputs": {"clip": clip, "stop_at_clip_layer": -request.clip_skip},
        }
        clip = ["15", 0]
    if request.vae is not None and request.vae.strip().lower() not in VAE_OF_CHECKPOINT:
        graph["16"] = {"class_type": "VAELoader", "inputs": {"vae_name": model_file(request.vae)}}
        vae = ["16", 0]
    return model, clip, vae


def _lora_inputs(lora: Lora, model: list[Any], clip: list[Any]) -> dict[str, Any]:
    return {
        "model": model,
        "clip": clip,
        "lora_name": model_file(lora.name),
        "strength_model": lora.unet_weight if lora.unet_weight is not None else lora.weight,
        "strength_clip": lora.weight,
    }


def _start_latent(
    graph: dict[str, dict[str, Any]], request: ImageRequest, vae: list[Any], image_name: str | None
) -> tuple[list[Any], float]:
    """The first KSampler's ``latent_image`` link and its ``denoise``."""
    if request.mode == "txt2img":
        graph["5"] = {
            "class_type": "EmptyLatentImage",
            "inputs": {
                "width": request.width or DEFAULTS["width"],
                "height": request.height or DEFAULTS["height"],
                "batch_size": request.batch_size,
            },
        }
        return ["5", 0], 1.0
    assert image_name is not None
    graph["10"] = {"class_type": "LoadImage", "inputs": {"image": image_name}}
    if request.mode == "img2img":
        graph["11"] = {"class_type": "VAEEncode", "inputs": {"pixels": ["10", 0], "vae": vae}}
        default = 0.75
    else:
        graph["11"] = {
            "class_type": "VAEEncodeForInpaint",
            "inputs": {"pixels": ["10", 0], "vae": vae, "mask": ["10", 1], "grow_mask_by": 6},
        }
        default = 1.0
    latent: list[Any] = ["11", 0]
    if request.batch_size > 1:
        graph["12"] = {
            "class_type": "RepeatLatentBatch",
            "inputs": {"samples": latent, "amount": request.batch_size},
        }
        latent = ["12", 0]
    return latent, request.denoising_strength if request.denoising_strength is not None else default


def _hires_pass(
    graph: dict[str, dict[str, Any]],
    hires: Hires,
    first: dict[str, Any],
    clip: list[Any],
    samples: list[Any],
) -> list[Any]:
    """Upscale the first pass's latents (node 13) and sample them again (node 14), as A1111's
    latent hires fix does; returns the link to the final latents."""
    method = latent_upscale_method(hires)
    if hires.resize_x or hires.resize_y:  # 0 keeps the aspect ratio; both given: A1111 crops the middle
        both = bool(hires.resize_x and hires.resize_y)
        graph["13"] = {
            "class_type": "LatentUpscale",
            "inputs": {
                "samples": samples,
                "upscale_method": method,
                "width": hires.resize_x,
                "height": hires.resize_y,
                "crop": "center" if both else "disabled",
            },
        }
    else:
        graph["13"] = {
            "class_type": "LatentUpscaleBy",
            "inputs": {"samples": samples, "upscale_method": method, "scale_by": hires.scale},
        }
    positive, negative = first["positive"], first["negative"]
    if hires.prompt:
        graph["17"] = _encode(hires.prompt, clip)
        positive = ["17", 0]
    if hires.negative_prompt:
        graph["18"] = _encode(hires.negative_prompt, clip)
        negative = ["18", 0]
    graph[HIRES_PASS] = {
        "class_type": "KSampler",
        "inputs": {
            **first,
            "steps": hires.second_pass_steps or first["steps"],
            "sampler_name": SAMPLERS.get(hires.sampler or "", first["sampler_name"]),
            "scheduler": SCHEDULERS.get((hires.scheduler or "").lower(), first["scheduler"]),
            "denoise": hires.denoising_strength,
            "positive": positive,
            "negative": negative,
            "latent_image": ["13", 0],
        },
    }
    return [HIRES_PASS, 0]
