"""``core.comfy.nodes`` and ``object_info``: ComfyUI's node types as its clients see them."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from sdgate.core import samplers as ours
from sdgate.core.comfy import NODES, SAMPLERS, SCHEDULERS, Choices, GraphLimits, object_info, sampler_for
from sdgate.core.comfy.nodes import DYNAMIC_LISTS, LINK_TYPES, MAX_SEED, WIDGET_TYPES

# ComfyUI 0.3.64's full lists (reference/other_apis.md §1.8), in its order.
COMFY_SAMPLERS = (
    "euler",
    "euler_cfg_pp",
    "euler_ancestral",
    "euler_ancestral_cfg_pp",
    "heun",
    "heunpp2",
    "dpm_2",
    "dpm_2_ancestral",
    "lms",
    "dpm_fast",
    "dpm_adaptive",
    "dpmpp_2s_ancestral",
    "dpmpp_2s_ancestral_cfg_pp",
    "dpmpp_sde",
    "dpmpp_sde_gpu",
    "dpmpp_2m",
    "dpmpp_2m_cfg_pp",
    "dpmpp_2m_sde",
    "dpmpp_2m_sde_gpu",
    "dpmpp_2m_sde_heun",
    "dpmpp_2m_sde_heun_gpu",
    "dpmpp_3m_sde",
    "dpmpp_3m_sde_gpu",
    "ddpm",
    "lcm",
    "ipndm",
    "ipndm_v",
    "deis",
    "res_multistep",
    "res_multistep_cfg_pp",
    "res_multistep_ancestral",
    "res_multistep_ancestral_cfg_pp",
    "gradient_estimation",
    "gradient_estimation_cfg_pp",
    "er_sde",
    "seeds_2",
    "seeds_3",
    "sa_solver",
    "sa_solver_pece",
    "ddim",
    "uni_pc",
    "uni_pc_bh2",
)
COMFY_SCHEDULERS = (
    "simple",
    "sgm_uniform",
    "karras",
    "exponential",
    "ddim_uniform",
    "beta",
    "normal",
    "linear_quadratic",
    "kl_optimal",
)

ISSUE_NODES = {
    "CheckpointLoaderSimple", "CLIPTextEncode", "CLIPSetLastLayer", "EmptyLatentImage", "KSampler",
    "KSamplerAdvanced", "VAEDecode", "VAEEncode", "VAEEncodeForInpaint", "SetLatentNoiseMask", "LoadImage",
    "LoadImageMask", "ImageScale", "ImageScaleBy", "LatentUpscale", "LatentUpscaleBy", "LoraLoader",
    "LoraLoaderModelOnly", "VAELoader", "UpscaleModelLoader", "ImageUpscaleWithModel", "SaveImage",
    "PreviewImage", "ConditioningCombine", "ConditioningSetArea", "ControlNetLoader", "ControlNetApply",
    "ControlNetApplyAdvanced",
}  # fmt: skip

CHOICES = Choices(
    checkpoints=("v1-5-pruned-emaonly.safetensors", "sdxl/base.safetensors"),
    loras=("detail.safetensors",),
    vae=("vae-ft-mse.safetensors",),
    upscale_models=("4x-UltraSharp.pth",),
    input_images=("example.png", "sub/photo.jpg"),
)


def test_the_issue_lists_every_node_type_we_specify() -> None:
    assert set(NODES) == ISSUE_NODES
    assert all(name == spec.class_type for name, spec in NODES.items())


@pytest.mark.parametrize("name", sorted(ISSUE_NODES))
def test_every_spec_is_well_formed(name: str) -> None:
    spec = NODES[name]
    assert len(spec.outputs) == len(spec.output_names)
    assert all(output in LINK_TYPES for output in spec.outputs)
    assert not spec.output_tooltips or len(spec.output_tooltips) == len(spec.outputs)
    assert spec.output_node == (name in ("SaveImage", "PreviewImage"))
    assert len({i.name for i in spec.inputs}) == len(spec.inputs)
    for item in spec.inputs:
        assert item.type in WIDGET_TYPES | LINK_TYPES, item
        if item.type == "COMBO":
            assert isinstance(item.options, tuple) or item.options in DYNAMIC_LISTS, item
        if item.type in ("INT", "FLOAT"):
            assert item.min is not None and item.max is not None, item
            assert item.min <= item.default <= item.max, item


@pytest.mark.parametrize(
    ("node", "name", "default", "low", "high", "step"),
    [
        ("EmptyLatentImage", "width", 512, 16, 16384, 8),
        ("EmptyLatentImage", "batch_size", 1, 1, 4096, None),
        ("KSampler", "seed", 0, 0, 2**64 - 1, None),
        ("KSampler", "steps", 20, 1, 10000, None),
        ("KSampler", "cfg", 8.0, 0.0, 100.0, 0.1),
        ("KSampler", "denoise", 1.0, 0.0, 1.0, 0.01),
        ("KSamplerAdvanced", "end_at_step", 10000, 0, 10000, None),
        ("VAEEncodeForInpaint", "grow_mask_by", 6, 0, 64, 1),
        ("LoraLoader", "strength_clip", 1.0, -100.0, 100.0, 0.01),
        ("LatentUpscale", "width", 512, 0, 16384, 8),
        ("ImageScale", "height", 512, 0, 16384, 1),
        ("LatentUpscaleBy", "scale_by", 1.5, 0.01, 8.0, 0.01),
        ("ImageScaleBy", "scale_by", 1.0, 0.01, 8.0, 0.01),
        ("CLIPSetLastLayer", "stop_at_clip_layer", -1, -24, -1, 1),
        ("ConditioningSetArea", "width", 64, 64, 16384, 8),
    ],
)
def test_ranges_are_comfyuis(
    node: str, name: str, default: float, low: float, high: float, step: float
) -> None:
    spec = NODES[node].input(name)
    assert spec is not None
    assert (spec.default, spec.min, spec.max, spec.step) == (default, low, high, step)


def test_fixed_combos_are_comfyuis() -> None:
    assert NODES["ImageScale"].input("upscale_method").options == (  # type: ignore[union-attr]
        "nearest-exact", "bilinear", "area", "bicubic", "lanczos",
    )  # fmt: skip
    assert NODES["LatentUpscale"].input("upscale_method").options[-1] == "bislerp"  # type: ignore[index,union-attr]
    assert NODES["LoadImageMask"].input("channel").options == ("alpha", "red", "green", "blue")  # type: ignore[union-attr]
    assert NODES["KSamplerAdvanced"].input("add_noise").options == ("enable", "disable")  # type: ignore[union-attr]


def test_samplers_and_schedulers_keep_comfyuis_order_and_are_ours() -> None:
    assert list(SAMPLERS) == [s for s in COMFY_SAMPLERS if s in SAMPLERS]
    assert list(SCHEDULERS) == [s for s in COMFY_SCHEDULERS if s in SCHEDULERS]
    assert SAMPLERS[0] == "euler" and "dpmpp_2m" in SAMPLERS and "normal" in SCHEDULERS
    for name in SAMPLERS:
        for scheduler in SCHEDULERS:
            sampler, schedule = sampler_for(name, scheduler)
            assert ours.get_sampler(sampler).name == sampler
            assert ours.get_scheduler(schedule).name == schedule


@pytest.mark.parametrize(
    ("comfy", "expected"),
    [
        (("euler", "normal"), ("Euler", "normal")),
        (("euler_ancestral", "karras"), ("Euler a", "karras")),
        (("dpmpp_2m", "karras"), ("DPM++ 2M", "karras")),
        (("dpmpp_2m_sde_gpu", "exponential"), ("DPM++ 2M SDE", "exponential")),
        (("dpmpp_sde", "simple"), ("DPM++ SDE", "simple")),
        (("ddim", "ddim_uniform"), ("DDIM", "ddim")),
        (("uni_pc", "sgm_uniform"), ("UniPC", "sgm_uniform")),
        (("lcm", "beta"), ("LCM", "beta")),
    ],
)
def test_sampler_for(comfy: tuple[str, str], expected: tuple[str, str]) -> None:
    assert sampler_for(*comfy) == expected


@pytest.mark.parametrize(
    "pair", [("euler_cfg_pp", "normal"), ("uni_pc_bh2", "karras"), ("euler", "linear_quadratic")]
)
def test_names_we_cannot_run_are_not_listed(pair: tuple[str, str]) -> None:
    assert pair[0] not in SAMPLERS or pair[1] not in SCHEDULERS
    with pytest.raises(KeyError):
        sampler_for(*pair)


def test_object_info_lists_every_node_in_the_v1_shape() -> None:
    info = object_info(CHOICES)
    assert set(info) == ISSUE_NODES
    json.dumps(info, allow_nan=False)
    for name, node in info.items():
        assert set(node) >= {
            "input", "input_order", "output", "output_is_list", "output_name", "name", "display_name",
            "description", "python_module", "category", "output_node",
        }  # fmt: skip
        assert node["name"] == name
        assert node["input_order"] == {key: list(value) for key, value in node["input"].items()}
        assert node["output_is_list"] == [False] * len(node["output"])
        for section in ("required", "optional"):
            for config in node["input"].get(section, {}).values():
                assert isinstance(config, list) and len(config) in (1, 2)
                assert isinstance(config[0], str | list)


def test_object_info_ksampler() -> None:
    node = object_info(CHOICES, "KSampler")["KSampler"]
    required = node["input"]["required"]
    assert list(required) == [
        "model", "seed", "steps", "cfg", "sampler_name", "scheduler", "positive", "negative", "latent_image",
        "denoise",
    ]  # fmt: skip
    seed = required["seed"]
    assert seed[0] == "INT"
    assert (seed[1]["default"], seed[1]["min"], seed[1]["max"]) == (0, 0, MAX_SEED)
    assert seed[1]["control_after_generate"] is True
    assert required["cfg"] == ["FLOAT", {**required["cfg"][1], "default": 8.0, "min": 0.0, "max": 100.0,
                                          "step": 0.1, "round": 0.01}]  # fmt: skip
    assert required["sampler_name"][0] == list(SAMPLERS)
    assert required["scheduler"][0] == list(SCHEDULERS)
    assert required["model"][0] == "MODEL"
    assert (node["output"], node["output_name"], node["category"]) == (["LATENT"], ["LATENT"], "sampling")
    assert node["output_node"] is False and node["python_module"] == "nodes"
    assert node["output_tooltips"] == ["The denoised latent."]


def test_object_info_lists_the_files_it_is_given() -> None:
    info = object_info(CHOICES)
    assert info["CheckpointLoaderSimple"]["input"]["required"]["ckpt_name"][0] == list(CHOICES.checkpoints)
    assert info["CheckpointLoaderSimple"]["output"] == ["MODEL", "CLIP", "VAE"]
    assert info["CheckpointLoaderSimple"]["display_name"] == "Load Checkpoint"
    assert info["LoraLoader"]["input"]["required"]["lora_name"][0] == ["detail.safetensors"]
    assert info["VAELoader"]["input"]["required"]["vae_name"][0] == ["vae-ft-mse.safetensors"]
    assert info["UpscaleModelLoader"]["input"]["required"]["model_name"][0] == ["4x-UltraSharp.pth"]
    assert info["UpscaleModelLoader"]["python_module"] == "comfy_extras.nodes_upscale_model"
    load = info["LoadImage"]["input"]["required"]["image"]
    assert load == [["example.png", "sub/photo.jpg"], {"image_upload": True}]
    assert info["LoadImage"]["output"] == ["IMAGE", "MASK"]


def test_object_info_inputs_without_options_are_one_element_arrays() -> None:
    node = object_info(CHOICES, "SetLatentNoiseMask")["SetLatentNoiseMask"]
    assert node["input"]["required"] == {"samples": ["LATENT"], "mask": ["MASK"]}
    text = object_info(CHOICES, "CLIPTextEncode")["CLIPTextEncode"]["input"]["required"]["text"]
    assert text[0] == "STRING" and text[1]["multiline"] is True and text[1]["dynamicPrompts"] is True


def test_object_info_output_nodes_and_hidden_inputs() -> None:
    save = object_info(CHOICES, "SaveImage")["SaveImage"]
    assert save["output_node"] is True and save["output"] == [] and save["display_name"] == "Save Image"
    assert save["input"]["hidden"] == {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"}
    assert save["input_order"]["hidden"] == ["prompt", "extra_pnginfo"]
    assert save["input"]["required"]["filename_prefix"][1]["default"] == "ComfyUI"
    assert object_info(CHOICES, "PreviewImage")["PreviewImage"]["output_node"] is True


def test_object_info_unknown_class_is_empty() -> None:
    assert object_info(CHOICES, "DiffControlNetLoader") == {}
    assert object_info(CHOICES, "") == {}


def test_object_info_with_limits_shows_our_maxima() -> None:
    limits = GraphLimits(max_side=2048, max_steps=150, max_batch_images=8)
    info = object_info(CHOICES, limits=limits)
    assert info["EmptyLatentImage"]["input"]["required"]["width"][1]["max"] == 2048
    assert info["EmptyLatentImage"]["input"]["required"]["batch_size"][1]["max"] == 8
    assert info["KSampler"]["input"]["required"]["steps"][1]["max"] == 150
    assert info["KSampler"]["input"]["required"]["seed"][1]["max"] == MAX_SEED
    assert object_info(CHOICES)["KSampler"]["input"]["required"]["steps"][1]["max"] == 10000


def test_core_comfy_imports_neither_torch_nor_fastapi() -> None:
    code = (
        "import sys, sdgate.core.comfy, sdgate.core.comfy.validate, sdgate.core.comfy.shapes\n"
        "print(','.join(m for m in ('torch', 'fastapi', 'starlette', 'diffusers') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == ""
