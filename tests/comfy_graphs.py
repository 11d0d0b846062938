"""Canonical ComfyUI API-format prompts (``reference/other_apis.md`` §1.7), for every test that
needs one: validation (core), the executor (engine) and the dialect (server).

Each function returns a fresh dict, keyed by string node id, as ComfyUI's frontend exports it and
as ``script_examples/websockets_api_example.py`` sends it. Node ids follow that example: "4" the
checkpoint, "6"/"7" the prompts, "3" the sampler, "8" the decode, "9" the SaveImage.
"""

from __future__ import annotations

from typing import Any

Graph = dict[str, Any]


def txt2img(
    ckpt: str,
    *,
    seed: int = 8566257,
    steps: int = 20,
    width: int = 512,
    height: int = 512,
    batch_size: int = 1,
    cfg: float = 8.0,
    sampler_name: str = "euler",
    scheduler: str = "normal",
    positive: str = "masterpiece best quality girl",
    negative: str = "bad hands",
    filename_prefix: str = "ComfyUI",
) -> Graph:
    """The websockets_api_example graph: checkpoint, two prompts, empty latent, KSampler, decode, save."""
    return {
        "3": {
            "class_type": "KSampler",
            "inputs": {
                "cfg": cfg,
                "denoise": 1,
                "latent_image": ["5", 0],
                "model": ["4", 0],
                "negative": ["7", 0],
                "positive": ["6", 0],
                "sampler_name": sampler_name,
                "scheduler": scheduler,
                "seed": seed,
                "steps": steps,
            },
        },
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "5": {
            "class_type": "EmptyLatentImage",
            "inputs": {"batch_size": batch_size, "height": height, "width": width},
        },
        "6": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["4", 1], "text": positive}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["4", 1], "text": negative}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": {
            "class_type": "SaveImage",
            "inputs": {"filename_prefix": filename_prefix, "images": ["8", 0]},
            "_meta": {"title": "Save Image"},
        },
    }


def img2img(
    ckpt: str, image_name: str, *, denoise: float = 0.6, seed: int = 42, steps: int = 20, **txt2img_args: Any
) -> Graph:
    """LoadImage -> VAEEncode -> KSampler (denoise < 1) in place of the empty latent."""
    graph = txt2img(ckpt, seed=seed, steps=steps, **txt2img_args)
    del graph["5"]
    graph["10"] = {"class_type": "LoadImage", "inputs": {"image": image_name}}
    graph["11"] = {"class_type": "VAEEncode", "inputs": {"pixels": ["10", 0], "vae": ["4", 2]}}
    graph["3"]["inputs"]["latent_image"] = ["11", 0]
    graph["3"]["inputs"]["denoise"] = denoise
    return graph


def inpaint(
    ckpt: str, image_name: str, *, grow_mask_by: int = 6, seed: int = 42, steps: int = 20, **txt2img_args: Any
) -> Graph:
    """LoadImage (its alpha is the mask) -> VAEEncodeForInpaint -> KSampler at denoise 1.0."""
    graph = txt2img(ckpt, seed=seed, steps=steps, **txt2img_args)
    del graph["5"]
    graph["10"] = {"class_type": "LoadImage", "inputs": {"image": image_name}}
    graph["11"] = {
        "class_type": "VAEEncodeForInpaint",
        "inputs": {"pixels": ["10", 0], "vae": ["4", 2], "mask": ["10", 1], "grow_mask_by": grow_mask_by},
    }
    graph["3"]["inputs"]["latent_image"] = ["11", 0]
    return graph


def inpaint_noise_mask(
    ckpt: str, image_name: str, mask_name: str, *, channel: str = "alpha", denoise: float = 0.8
) -> Graph:
    """VAEEncode + SetLatentNoiseMask with a LoadImageMask mask: keeps the original under the mask."""
    graph = img2img(ckpt, image_name, denoise=denoise)
    graph["12"] = {"class_type": "LoadImageMask", "inputs": {"image": mask_name, "channel": channel}}
    graph["13"] = {"class_type": "SetLatentNoiseMask", "inputs": {"samples": ["11", 0], "mask": ["12", 0]}}
    graph["3"]["inputs"]["latent_image"] = ["13", 0]
    return graph


def lora(
    ckpt: str,
    lora_name: str,
    *,
    strength_model: float = 1.0,
    strength_clip: float = 1.0,
    seed: int = 42,
    **txt2img_args: Any,
) -> Graph:
    """txt2img (``txt2img_args``: its keywords) with a LoraLoader between the checkpoint and the
    sampler and prompts."""
    graph = txt2img(ckpt, seed=seed, **txt2img_args)
    graph["10"] = {
        "class_type": "LoraLoader",
        "inputs": {
            "model": ["4", 0],
            "clip": ["4", 1],
            "lora_name": lora_name,
            "strength_model": strength_model,
            "strength_clip": strength_clip,
        },
    }
    graph["3"]["inputs"]["model"] = ["10", 0]
    graph["6"]["inputs"]["clip"] = ["10", 1]
    graph["7"]["inputs"]["clip"] = ["10", 1]
    return graph


def hires(
    ckpt: str,
    *,
    width: int = 512,
    height: int = 512,
    scale_by: float = 1.5,
    second_steps: int = 10,
    denoise: float = 0.5,
    seed: int = 42,
    steps: int = 20,
) -> Graph:
    """The "latent hires fix": sample, LatentUpscaleBy, sample again at denoise < 1, decode, save."""
    graph = txt2img(ckpt, seed=seed, width=width, height=height, steps=steps)
    graph["10"] = {
        "class_type": "LatentUpscaleBy",
        "inputs": {"samples": ["3", 0], "upscale_method": "nearest-exact", "scale_by": scale_by},
    }
    graph["11"] = {
        "class_type": "KSampler",
        "inputs": {
            "cfg": 8,
            "denoise": denoise,
            "latent_image": ["10", 0],
            "model": ["4", 0],
            "negative": ["7", 0],
            "positive": ["6", 0],
            "sampler_name": "dpmpp_2m",
            "scheduler": "karras",
            "seed": seed,
            "steps": second_steps,
        },
    }
    graph["8"]["inputs"]["samples"] = ["11", 0]
    return graph


def upscale_with_model(ckpt: str, model_name: str) -> Graph:
    """txt2img, then an upscale model on the decoded image, saved beside a preview of the original."""
    graph = txt2img(ckpt)
    graph["10"] = {"class_type": "UpscaleModelLoader", "inputs": {"model_name": model_name}}
    graph["11"] = {
        "class_type": "ImageUpscaleWithModel",
        "inputs": {"upscale_model": ["10", 0], "image": ["8", 0]},
    }
    graph["9"]["inputs"]["images"] = ["11", 0]
    graph["12"] = {"class_type": "PreviewImage", "inputs": {"images": ["8", 0]}}
    return graph


def controlnet(
    ckpt: str,
    control_net_name: str,
    image_name: str,
    *,
    strength: float = 1.0,
    advanced: bool = False,
    start_percent: float = 0.0,
    end_percent: float = 1.0,
    **txt2img_args: Any,
) -> Graph:
    """txt2img guided by a ControlNet: LoadImage (an already-made control map) and ControlNetLoader
    into ControlNetApply on the positive prompt, or, ``advanced``, ControlNetApplyAdvanced on both
    prompts with a start/end window (ComfyUI's default ControlNet workflow)."""
    graph = txt2img(ckpt, **txt2img_args)
    graph["10"] = {"class_type": "LoadImage", "inputs": {"image": image_name}}
    graph["11"] = {"class_type": "ControlNetLoader", "inputs": {"control_net_name": control_net_name}}
    if advanced:
        graph["12"] = {
            "class_type": "ControlNetApplyAdvanced",
            "inputs": {
                "positive": ["6", 0],
                "negative": ["7", 0],
                "control_net": ["11", 0],
                "image": ["10", 0],
                "strength": strength,
                "start_percent": start_percent,
                "end_percent": end_percent,
            },
        }
        graph["3"]["inputs"]["positive"] = ["12", 0]
        graph["3"]["inputs"]["negative"] = ["12", 1]
    else:
        graph["12"] = {
            "class_type": "ControlNetApply",
            "inputs": {
                "conditioning": ["6", 0],
                "control_net": ["11", 0],
                "image": ["10", 0],
                "strength": strength,
            },
        }
        graph["3"]["inputs"]["positive"] = ["12", 0]
    return graph
