"""``core.comfy.validate``: ComfyUI's prompt validation, its 400 bodies word for word, our limits,
and hostile graphs refused fast with nothing escaping."""

from __future__ import annotations

import copy
import json
import random
import time
from typing import Any

import pytest

from sdgate.core.comfy import NODES, Choices, GraphInvalid, GraphLimits, ValidatedGraph, validate_prompt
from sdgate.settings import Settings
from tests import comfy_graphs as graphs

CKPT = "v1-5-pruned-emaonly.safetensors"
CHOICES = Choices(
    checkpoints=(CKPT, "sdxl/base.safetensors"),
    loras=("detail.safetensors",),
    vae=("vae-ft-mse.safetensors",),
    upscale_models=("4x-UltraSharp.pth",),
    input_images=("example.png", "mask.png", "sub/photo.jpg"),
)
LIMITS = GraphLimits()


def ok(
    prompt: Any, choices: Choices = CHOICES, limits: GraphLimits = LIMITS, **kwargs: Any
) -> ValidatedGraph:
    return validate_prompt(prompt, choices, limits, **kwargs)


def refused(
    prompt: Any, choices: Choices = CHOICES, limits: GraphLimits = LIMITS, **kwargs: Any
) -> dict[str, Any]:
    with pytest.raises(GraphInvalid) as caught:
        validate_prompt(prompt, choices, limits, **kwargs)
    body = caught.value.body
    json.dumps(body, allow_nan=False)  # the server can always render it
    assert set(body) == {"error", "node_errors"}
    assert set(body["error"]) == {"type", "message", "details", "extra_info"}
    return body


def node_error(body: dict[str, Any], node_id: str) -> dict[str, Any]:
    """The one reason of ``node_id`` in a prompt_outputs_failed_validation body (checking its shape)."""
    assert body["error"]["type"] == "prompt_outputs_failed_validation"
    entry = body["node_errors"][node_id]
    assert set(entry) == {"errors", "dependent_outputs", "class_type"}
    assert len(entry["errors"]) == 1, entry
    reason = entry["errors"][0]
    assert set(reason) == {"type", "message", "details", "extra_info"}
    return reason


# --- the canonical graphs ---------------------------------------------------------------------


def test_txt2img_validates_and_is_cast() -> None:
    prompt = graphs.txt2img(CKPT, seed=2**64 - 1, steps=30, width=640, height=768)
    prompt["3"]["inputs"]["steps"] = "30"  # ComfyUI casts: int("30")
    prompt["3"]["inputs"]["cfg"] = 7  # float(7)
    result = ok(prompt)
    assert result.outputs == ("9",)
    assert result.node_errors == {}
    assert result.image_count == 1
    assert result.checkpoint == CKPT
    assert result.input_images == ()
    assert set(result.graph) == {"3", "4", "5", "6", "7", "8", "9"}
    sampler = result.graph["3"]
    assert sampler["class_type"] == "KSampler"
    assert sampler["inputs"]["steps"] == 30 and isinstance(sampler["inputs"]["steps"], int)
    assert sampler["inputs"]["cfg"] == 7.0 and isinstance(sampler["inputs"]["cfg"], float)
    assert sampler["inputs"]["denoise"] == 1.0 and isinstance(sampler["inputs"]["denoise"], float)
    assert sampler["inputs"]["seed"] == 2**64 - 1
    assert sampler["inputs"]["model"] == ["4", 0]
    assert result.graph["9"] == {
        "class_type": "SaveImage",
        "inputs": {"filename_prefix": "ComfyUI", "images": ["8", 0]},
    }


@pytest.mark.parametrize(
    ("prompt", "images"),
    [
        (graphs.img2img(CKPT, "example.png"), ("example.png",)),
        (graphs.inpaint(CKPT, "example.png"), ("example.png",)),
        (graphs.inpaint_noise_mask(CKPT, "example.png", "mask.png"), ("example.png", "mask.png")),
        (graphs.lora(CKPT, "detail.safetensors"), ()),
        (graphs.hires(CKPT), ()),
        (graphs.upscale_with_model(CKPT, "4x-UltraSharp.pth"), ()),
    ],
    ids=["img2img", "inpaint", "noise-mask", "lora", "hires", "upscale-model"],
)
def test_canonical_graphs_validate(prompt: dict[str, Any], images: tuple[str, ...]) -> None:
    result = ok(prompt)
    assert result.node_errors == {}
    assert result.input_images == images
    assert result.checkpoint == CKPT
    assert set(result.graph) == set(prompt)
    assert result.image_count == len(result.outputs)


def test_batches_count_images_through_the_graph() -> None:
    prompt = graphs.upscale_with_model(CKPT, "4x-UltraSharp.pth")
    prompt["5"]["inputs"]["batch_size"] = 4
    assert ok(prompt).image_count == 8  # a SaveImage and a PreviewImage of the same batch of 4


def test_unused_nodes_are_dropped_and_link_ids_normalised() -> None:
    prompt = graphs.txt2img(CKPT)
    prompt["99"] = {"class_type": "CLIPTextEncode", "inputs": {"clip": ["4", 1], "text": "unused"}}
    prompt["8"]["inputs"]["vae"] = [4, 2]  # some scripts send int ids
    prompt["8"]["inputs"]["junk"] = "not an input"
    result = ok(prompt)
    assert "99" not in result.graph
    assert result.graph["8"]["inputs"] == {"samples": ["3", 0], "vae": ["4", 2]}


def test_annotated_input_image_names_are_accepted() -> None:
    result = ok(graphs.img2img(CKPT, "sub/photo.jpg [input]"))
    assert result.input_images == ("sub/photo.jpg",)
    assert result.graph["10"]["inputs"]["image"] == "sub/photo.jpg"


def test_widget_value_wrapped_in_value_key_is_unwrapped() -> None:
    prompt = graphs.txt2img(CKPT)
    prompt["3"]["inputs"]["steps"] = {"__value__": 12}
    assert ok(prompt).graph["3"]["inputs"]["steps"] == 12


# --- prompt-level errors ----------------------------------------------------------------------


def test_no_prompt() -> None:
    assert refused(None) == {
        "error": {
            "type": "no_prompt",
            "message": "No prompt provided",
            "details": "No prompt provided",
            "extra_info": {},
        },
        "node_errors": {},
    }


@pytest.mark.parametrize("prompt", [[], "graph", 5])
def test_prompt_that_is_not_an_object(prompt: Any) -> None:
    assert refused(prompt)["error"]["type"] == "invalid_prompt"


def test_missing_class_type() -> None:
    prompt = graphs.txt2img(CKPT)
    del prompt["6"]["class_type"]
    assert refused(prompt) == {
        "error": {
            "type": "invalid_prompt",
            "message": "Cannot execute because a node is missing the class_type property.",
            "details": "Node ID '#6'",
            "extra_info": {},
        },
        "node_errors": {},
    }


def test_node_that_is_not_an_object_has_no_class_type() -> None:
    prompt = graphs.txt2img(CKPT)
    prompt["6"] = "CLIPTextEncode"
    assert refused(prompt)["error"]["details"] == "Node ID '#6'"


def test_unknown_node_types_are_named() -> None:
    prompt = graphs.txt2img(CKPT)
    prompt["20"] = {"class_type": "DiffControlNetLoader", "inputs": {"control_net_name": "canny.pth"}}
    prompt["21"] = {"class_type": "IPAdapterApply", "inputs": {}}
    prompt["22"] = {"class_type": "DiffControlNetLoader", "inputs": {}}
    body = refused(prompt)
    assert body == {
        "error": {
            "type": "invalid_prompt",
            "message": "Cannot execute because node DiffControlNetLoader does not exist.",
            "details": "Node ID '#20'",
            "extra_info": {"missing_node_types": ["DiffControlNetLoader", "IPAdapterApply"]},
        },
        "node_errors": {},
    }


def test_unhashable_class_type_does_not_exist() -> None:
    prompt = graphs.txt2img(CKPT)
    prompt["6"]["class_type"] = ["CLIPTextEncode"]
    assert (
        refused(prompt)["error"]["message"]
        == "Cannot execute because node ['CLIPTextEncode'] does not exist."
    )


def test_prompt_no_outputs() -> None:
    prompt = graphs.txt2img(CKPT)
    del prompt["9"]
    assert refused(prompt) == {
        "error": {
            "type": "prompt_no_outputs",
            "message": "Prompt has no outputs",
            "details": "",
            "extra_info": {},
        },
        "node_errors": {},
    }
    assert refused(graphs.txt2img(CKPT), targets=["3"])["error"]["type"] == "prompt_no_outputs"


def test_targets_pick_output_nodes() -> None:
    prompt = graphs.upscale_with_model(CKPT, "4x-UltraSharp.pth")
    result = ok(prompt, targets=["12"])
    assert result.outputs == ("12",)
    assert "11" not in result.graph and "10" not in result.graph


# --- per-node reasons -------------------------------------------------------------------------


def test_required_input_missing() -> None:
    prompt = graphs.txt2img(CKPT)
    del prompt["3"]["inputs"]["seed"]
    body = refused(prompt)
    assert body["error"]["details"] == ""  # the output's own reasons only, as ComfyUI joins them
    assert body["node_errors"] == {
        "3": {
            "errors": [
                {
                    "type": "required_input_missing",
                    "message": "Required input is missing",
                    "details": "seed",
                    "extra_info": {"input_name": "seed"},
                }
            ],
            "dependent_outputs": ["9"],
            "class_type": "KSampler",
        }
    }


def test_output_nodes_own_reasons_make_the_details() -> None:
    prompt = graphs.txt2img(CKPT)
    del prompt["9"]["inputs"]["images"]
    prompt["9"]["inputs"]["filename_prefix"] = {"a": 1}
    body = refused(prompt)
    assert body["error"]["details"] == (
        "Required input is missing: images\n"
        "Failed to convert an input value to a STRING value: filename_prefix, {'a': 1}, "
        "expected a string, got dict"
    )
    assert [r["type"] for r in body["node_errors"]["9"]["errors"]] == [
        "required_input_missing",
        "invalid_input_type",
    ]


@pytest.mark.parametrize("link", [["4"], ["4", 1, 2], ["4", "1"], [None, 0], ["4", True], "4", 4, None])
def test_bad_linked_input(link: list[Any]) -> None:
    prompt = graphs.txt2img(CKPT)
    prompt["6"]["inputs"]["clip"] = link
    reason = node_error(refused(prompt), "6")
    assert reason["type"] == "bad_linked_input"
    assert reason["message"] == "Bad linked input, must be a length-2 list of [node_id, slot_index]"
    assert reason["details"] == "clip"
    assert reason["extra_info"]["input_name"] == "clip"
    assert reason["extra_info"]["input_config"] == [
        "CLIP",
        {"tooltip": "The CLIP model used for encoding the text."},
    ]


def test_link_to_a_missing_node() -> None:
    prompt = graphs.txt2img(CKPT)
    prompt["6"]["inputs"]["clip"] = ["44", 1]
    reason = node_error(refused(prompt), "6")
    assert reason["type"] == "bad_linked_input"
    assert reason["details"] == "clip, node '44' does not exist"
    assert reason["extra_info"]["received_value"] == ["44", 1]


def test_link_to_a_missing_output() -> None:
    prompt = graphs.txt2img(CKPT)
    prompt["8"]["inputs"]["vae"] = ["4", 3]
    reason = node_error(refused(prompt), "8")
    assert reason["type"] == "bad_linked_input"
    assert reason["details"] == "vae, node '4' (CheckpointLoaderSimple) has no output 3"


def test_return_type_mismatch() -> None:
    prompt = graphs.txt2img(CKPT)
    prompt["8"]["inputs"]["vae"] = ["4", 1]
    reason = node_error(refused(prompt), "8")
    assert reason == {
        "type": "return_type_mismatch",
        "message": "Return type mismatch between linked nodes",
        "details": "vae, received_type(CLIP) mismatch input_type(VAE)",
        "extra_info": {
            "input_name": "vae",
            "input_config": ["VAE", {"tooltip": "The VAE model used for decoding the latent."}],
            "received_type": "CLIP",
            "linked_node": ["4", 1],
        },
    }


def test_a_link_into_a_widget_is_a_mismatch() -> None:
    prompt = graphs.txt2img(CKPT)
    prompt["3"]["inputs"]["steps"] = ["5", 0]
    assert (
        node_error(refused(prompt), "3")["details"] == "steps, received_type(LATENT) mismatch input_type(INT)"
    )


@pytest.mark.parametrize(
    ("name", "value", "type_"),
    [
        ("steps", "twenty", "INT"),
        ("steps", None, "INT"),
        ("cfg", "high", "FLOAT"),
        ("seed", float("inf"), "INT"),
    ],
)
def test_invalid_input_type(name: str, value: Any, type_: str) -> None:
    prompt = graphs.txt2img(CKPT)
    prompt["3"]["inputs"][name] = value
    reason = node_error(refused(prompt), "3")
    assert reason["type"] == "invalid_input_type"
    assert reason["message"] == f"Failed to convert an input value to a {type_} value"
    assert reason["details"].startswith(f"{name}, {value}, ")
    assert reason["extra_info"]["input_name"] == name
    assert reason["extra_info"]["input_config"][0] == type_
    assert "exception_message" in reason["extra_info"]


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf"), "nan", "1e400"])
def test_non_finite_floats_are_refused(value: Any) -> None:
    prompt = graphs.txt2img(CKPT)
    prompt["3"]["inputs"]["cfg"] = value
    reason = node_error(refused(prompt), "3")
    assert reason["type"] == "invalid_input_type"
    assert isinstance(reason["extra_info"]["received_value"], str)  # NaN is not JSON


def test_value_smaller_than_min() -> None:
    prompt = graphs.txt2img(CKPT)
    prompt["3"]["inputs"]["denoise"] = -0.5
    assert node_error(refused(prompt), "3") == {
        "type": "value_smaller_than_min",
        "message": "Value -0.5 smaller than min of 0.0",
        "details": "denoise",
        "extra_info": {
            "input_name": "denoise",
            "input_config": [
                "FLOAT",
                {
                    "default": 1.0,
                    "min": 0.0,
                    "max": 1.0,
                    "step": 0.01,
                    "tooltip": NODES["KSampler"].input("denoise").extra["tooltip"],  # type: ignore[union-attr]
                },
            ],
            "received_value": -0.5,
        },
    }


def test_value_bigger_than_max() -> None:
    prompt = graphs.txt2img(CKPT, seed=2**64)
    reason = node_error(refused(prompt), "3")
    assert reason["type"] == "value_bigger_than_max"
    assert reason["message"] == "Value 18446744073709551616 bigger than max of 18446744073709551615"
    assert reason["details"] == "seed"
    assert reason["extra_info"]["received_value"] == 2**64


def test_our_limits_tighten_the_ranges() -> None:
    limits = GraphLimits(max_side=2048, max_steps=150, max_batch_images=8)
    prompt = graphs.txt2img(CKPT, width=4096, steps=200, batch_size=9)
    body = refused(prompt, limits=limits)
    assert node_error(body, "3")["message"] == "Value 200 bigger than max of 150"
    errors = body["node_errors"]["5"]["errors"]
    assert [e["message"] for e in errors] == [
        "Value 4096 bigger than max of 2048",
        "Value 9 bigger than max of 8",
    ]
    assert errors[0]["extra_info"]["input_config"][1]["max"] == 2048


def test_value_not_in_list_short_list() -> None:
    prompt = graphs.txt2img(CKPT)
    prompt["4"]["inputs"]["ckpt_name"] = "missing.safetensors"
    assert node_error(refused(prompt), "4") == {
        "type": "value_not_in_list",
        "message": "Value not in list",
        "details": "ckpt_name: 'missing.safetensors' not in ['v1-5-pruned-emaonly.safetensors', "
        "'sdxl/base.safetensors']",
        "extra_info": {
            "input_name": "ckpt_name",
            "input_config": [
                [CKPT, "sdxl/base.safetensors"],
                {"tooltip": "The name of the checkpoint (model) to load."},
            ],
            "received_value": "missing.safetensors",
        },
    }


def test_value_not_in_list_long_list() -> None:
    many = Choices(checkpoints=tuple(f"model{i}.safetensors" for i in range(25)))
    reason = node_error(refused(graphs.txt2img("missing.safetensors"), choices=many), "4")
    assert reason["details"] == "ckpt_name: 'missing.safetensors' not in (list of length 25)"
    assert reason["extra_info"] == {
        "input_name": "ckpt_name",
        "input_config": None,
        "received_value": "missing.safetensors",
    }


@pytest.mark.parametrize(
    ("name", "value"),
    [("sampler_name", "euler_cfg_pp"), ("sampler_name", "res_multistep"), ("scheduler", "linear_quadratic"),
     ("sampler_name", "Euler a"), ("scheduler", 3)],
)  # fmt: skip
def test_sampler_and_scheduler_names_we_cannot_run(name: str, value: Any) -> None:
    prompt = graphs.txt2img(CKPT)
    prompt["3"]["inputs"][name] = value
    reason = node_error(refused(prompt), "3")
    assert reason["type"] == "value_not_in_list"
    assert reason["details"].startswith(f"{name}: '{value}' not in ")


def test_fixed_combo_not_in_list() -> None:
    prompt = graphs.hires(CKPT)
    prompt["10"]["inputs"]["upscale_method"] = "lanczos"  # an image method, not a latent one
    reason = node_error(refused(prompt), "10")
    assert reason["details"] == (
        "upscale_method: 'lanczos' not in ['nearest-exact', 'bilinear', 'area', 'bicubic', 'bislerp']"
    )


def test_load_image_file_missing_is_custom_validation() -> None:
    reason = node_error(refused(graphs.img2img(CKPT, "nowhere.png")), "10")
    assert reason == {
        "type": "custom_validation_failed",
        "message": "Custom validation failed for node",
        "details": "image - Invalid image file: nowhere.png",
        "extra_info": {"input_name": "image"},
    }
    body = refused(graphs.inpaint_noise_mask(CKPT, "example.png", "example.png [output]"))
    assert node_error(body, "12")["details"] == "image - Invalid image file: example.png [output]"


def test_node_errors_name_node_class_and_every_dependent_output() -> None:
    prompt = graphs.upscale_with_model(CKPT, "4x-UltraSharp.pth")
    prompt["6"]["inputs"]["text"] = ["4", 0]  # MODEL into a STRING
    body = refused(prompt)
    assert set(body["node_errors"]) == {"6"}
    assert body["node_errors"]["6"]["class_type"] == "CLIPTextEncode"
    assert body["node_errors"]["6"]["dependent_outputs"] == ["9", "12"]


def test_a_failed_output_beside_one_that_passes() -> None:
    prompt = graphs.upscale_with_model(CKPT, "missing.pth")
    result = ok(prompt)
    assert result.outputs == ("12",)
    assert set(result.graph) == {"3", "4", "5", "6", "7", "8", "12"}
    assert result.image_count == 1
    assert set(result.node_errors) == {"10"}
    assert result.node_errors["10"]["dependent_outputs"] == ["9"]
    assert result.node_errors["10"]["errors"][0]["type"] == "value_not_in_list"


@pytest.mark.parametrize("inputs", [["a"], "x", 5, None])
def test_inputs_that_are_not_an_object(inputs: Any) -> None:
    prompt = graphs.txt2img(CKPT)
    prompt["3"]["inputs"] = inputs
    reason = node_error(refused(prompt), "3")
    assert reason["type"] == "exception_during_validation"


def test_missing_inputs_key_is_every_input_missing() -> None:
    prompt = graphs.txt2img(CKPT)
    del prompt["5"]["inputs"]
    body = refused(prompt)
    assert [e["details"] for e in body["node_errors"]["5"]["errors"]] == ["width", "height", "batch_size"]


# --- limits on derived values -------------------------------------------------------------------


def test_hires_over_max_pixels() -> None:
    limits = GraphLimits(max_pixels=1024 * 1024)
    reason = node_error(
        refused(graphs.hires(CKPT, width=1024, height=1024, scale_by=2.0), limits=limits), "10"
    )
    assert reason["type"] == "custom_validation_failed"
    assert (
        reason["details"] == "scale_by - the size 2048x2048 is over the limit of 1048576 pixels (max_pixels)"
    )
    assert reason["extra_info"] == {"input_name": "scale_by"}


def test_latent_upscale_over_max_side() -> None:
    prompt = graphs.txt2img(CKPT)
    prompt["10"] = {
        "class_type": "LatentUpscale",
        "inputs": {
            "samples": ["3", 0],
            "upscale_method": "bilinear",
            "width": 0,
            "height": 4096,
            "crop": "disabled",
        },
    }
    prompt["8"]["inputs"]["samples"] = ["10", 0]
    limits = GraphLimits(max_side=4096, max_pixels=4096 * 4096)
    assert ok(prompt, limits=limits).graph["10"]["inputs"]["width"] == 0
    prompt["5"]["inputs"]["width"] = 1024  # 0 keeps the aspect ratio: 8192x4096
    reason = node_error(refused(prompt, limits=limits), "10")
    assert (
        reason["details"] == "width - the size 8192x4096 is over the limit of 4096 pixels a side (max_side)"
    )


def test_loaded_image_sizes_bound_what_is_made_from_them() -> None:
    prompt = graphs.img2img(CKPT, "example.png")
    prompt["12"] = {
        "class_type": "ImageScaleBy",
        "inputs": {"image": ["10", 0], "upscale_method": "lanczos", "scale_by": 4.0},
    }
    prompt["11"]["inputs"]["pixels"] = ["12", 0]
    assert ok(prompt).node_errors == {}  # the size is unknown until it runs: the executor bounds it
    sized = Choices(
        checkpoints=(CKPT,), input_images=("example.png",), image_sizes={"example.png": (1024, 1024)}
    )
    reason = node_error(refused(prompt, choices=sized), "12")
    assert (
        reason["details"] == "scale_by - the size 4096x4096 is over the limit of 4194304 pixels (max_pixels)"
    )


def test_size_below_the_models_vae_factor() -> None:
    limits = GraphLimits(size_multiple=32)
    reason = node_error(refused(graphs.txt2img(CKPT, width=16, height=512), limits=limits), "5")
    assert reason["details"] == "width - the size 0x512 is below the model's minimum of 32 pixels a side"


def test_images_of_all_outputs_together_are_bounded() -> None:
    limits = GraphLimits(max_batch_images=6)
    prompt = graphs.upscale_with_model(CKPT, "4x-UltraSharp.pth")
    prompt["5"]["inputs"]["batch_size"] = 4
    result = ok(prompt, limits=limits)  # the first output fits; the second would make 8
    assert result.outputs == ("9",)
    assert result.image_count == 4
    reason = result.node_errors["12"]["errors"][0]
    assert (
        reason["details"]
        == "images - the prompt would write 8 images, over the limit of 6 (max_batch_images)"
    )


def test_total_steps_are_bounded() -> None:
    limits = GraphLimits(max_steps=100, max_total_steps=120)
    prompt = graphs.hires(CKPT, second_steps=30)
    prompt["3"]["inputs"]["steps"] = 100
    reason = node_error(refused(prompt, limits=limits), "11")
    assert (
        reason["details"]
        == "steps - the prompt's samplers would run 130 steps, over the limit of 120 (max_total_steps)"
    )


def test_loras_are_bounded() -> None:
    prompt = graphs.lora(CKPT, "detail.safetensors")
    prompt["11"] = {
        "class_type": "LoraLoaderModelOnly",
        "inputs": {"model": ["10", 0], "lora_name": "detail.safetensors", "strength_model": -0.5},
    }
    prompt["3"]["inputs"]["model"] = ["11", 0]
    assert ok(prompt, limits=GraphLimits(max_loras=2)).node_errors == {}
    reason = node_error(refused(prompt, limits=GraphLimits(max_loras=1)), "11")
    assert reason["details"] == "lora_name - the prompt loads 2 LoRAs, over the limit of 1 (max_loras)"


def test_largest_known_size() -> None:
    assert ok(graphs.hires(CKPT, width=512, height=768, scale_by=1.5)).largest_size == (768, 1152)
    assert ok(graphs.img2img(CKPT, "example.png")).largest_size is None


def test_text_over_max_prompt_bytes() -> None:
    limits = GraphLimits(max_prompt_bytes=100)
    reason = node_error(refused(graphs.txt2img(CKPT, positive="é" * 51), limits=limits), "6")
    assert reason["type"] == "custom_validation_failed"
    assert reason["details"] == "text - the text is over the limit of 100 bytes (max_prompt_bytes)"


@pytest.mark.parametrize("prefix", ["../../etc/x", "/tmp/x", "a/../../x", "C:/x", "..\\x", "x\x00"])
def test_filename_prefix_outside_the_output_folder(prefix: str) -> None:
    reason = node_error(refused(graphs.txt2img(CKPT, filename_prefix=prefix)), "9")
    assert reason["details"] == "filename_prefix - Saving image outside the output folder is not allowed."
    for fine in ("renders/%date:yyyy-MM-dd%/cat", "%date:yyyy-MM-dd%/ComfyUI", "a..b"):
        assert ok(graphs.txt2img(CKPT, filename_prefix=fine)).outputs == ("9",)


def test_limits_from_settings() -> None:
    settings = Settings(
        max_side=3000, max_pixels=5_000_000, max_steps=77, max_batch_images=5, max_prompt_bytes=999
    )
    limits = GraphLimits.from_settings(settings, size_multiple=16)
    assert (limits.max_side, limits.max_pixels, limits.max_steps, limits.max_batch_images) == (
        3000,
        5_000_000,
        77,
        5,
    )
    assert (limits.max_prompt_bytes, limits.size_multiple, limits.max_total_steps) == (999, 16, 1500)
    assert limits.max_nodes == 500 and limits.max_loras == settings.max_loras


# --- hostile graphs ------------------------------------------------------------------------------


def _chain(length: int) -> dict[str, Any]:
    """txt2img with ``length`` LatentUpscaleBy nodes between the sampler and the decode."""
    prompt = graphs.txt2img(CKPT, width=64, height=64)
    previous = "3"
    for i in range(length):
        node_id = f"c{i}"
        prompt[node_id] = {
            "class_type": "LatentUpscaleBy",
            "inputs": {"samples": [previous, 0], "upscale_method": "nearest-exact", "scale_by": 1.0},
        }
        previous = node_id
    prompt["8"]["inputs"]["samples"] = [previous, 0]
    return prompt


def test_ten_thousand_nodes_are_refused_fast() -> None:
    prompt = {
        str(i): {"class_type": "SaveImage", "inputs": {"images": [str(i + 1), 0]}} for i in range(10_000)
    }
    start = time.perf_counter()
    body = refused(prompt)
    assert time.perf_counter() - start < 0.5
    assert body["error"]["type"] == "invalid_prompt"
    assert body["error"]["message"] == "Cannot execute because the prompt has 10000 nodes; the limit is 500."


def test_deep_chain_is_refused_past_max_depth() -> None:
    body = refused(_chain(300))
    [(node_id, entry)] = body["node_errors"].items()
    assert entry["class_type"] == "LatentUpscaleBy"
    assert entry["errors"][0]["details"] == "samples - the chain of linked nodes is deeper than 200"


def test_deep_chain_walks_without_recursion() -> None:
    limits = GraphLimits(max_nodes=100_000, max_depth=100_000)
    start = time.perf_counter()
    result = ok(_chain(10_000), limits=limits)
    assert time.perf_counter() - start < 5
    assert len(result.graph) == 10_007


def test_cycle() -> None:
    prompt = graphs.hires(CKPT)
    prompt["3"]["inputs"]["latent_image"] = ["11", 0]  # 3 -> 11 -> 10 -> 3
    body = refused(prompt)
    assert list(body["node_errors"]) == ["3"]  # the node that closes the cycle
    reason = node_error(body, "3")
    assert reason == {
        "type": "dependency_cycle",
        "message": "Dependency cycle detected",
        "details": "latent_image, node '11' depends on this node's own output",
        "extra_info": {"input_name": "latent_image"},
    }


def test_self_loop() -> None:
    prompt = graphs.hires(CKPT)
    prompt["10"]["inputs"]["samples"] = ["10", 0]
    assert node_error(refused(prompt), "10")["type"] == "dependency_cycle"


def test_huge_and_odd_numbers() -> None:
    prompt = graphs.txt2img(CKPT, width=1e308, height=-1e308)  # type: ignore[arg-type]
    prompt["3"]["inputs"]["steps"] = 10**4000
    prompt["3"]["inputs"]["cfg"] = 10**400
    body = refused(prompt)
    width, height = body["node_errors"]["5"]["errors"]
    assert width["type"] == "value_bigger_than_max" and width["message"].endswith("bigger than max of 4096")
    assert height["type"] == "value_smaller_than_min"
    steps, cfg = body["node_errors"]["3"]["errors"]
    assert steps["type"] == "value_bigger_than_max"
    assert "<an integer of" in steps["message"]
    assert cfg["type"] == "invalid_input_type"  # float(10**400) overflows


def test_random_mutations_never_escape() -> None:
    rng = random.Random(18)
    odd: list[Any] = [
        None,
        [],
        {},
        ["3"],
        ["3", 0],
        ["nope", 0],
        [5, 9],
        "x",
        -1,
        1e308,
        float("nan"),
        True,
        2**70,
    ]
    base = graphs.upscale_with_model(CKPT, "4x-UltraSharp.pth")
    start = time.perf_counter()
    for _ in range(2000):
        prompt = copy.deepcopy(base)
        for _ in range(rng.randint(1, 4)):
            node = prompt[rng.choice(list(prompt))]
            inputs = node["inputs"]
            if inputs:
                inputs[rng.choice(list(inputs))] = rng.choice(odd)
            if rng.random() < 0.05:
                node["class_type"] = rng.choice(["KSampler", "SaveImage", "VAEDecode", "LoadImage"])
        try:
            result = ok(prompt)
        except GraphInvalid as exc:
            json.dumps(exc.body, allow_nan=False)
            assert exc.body["error"]["type"] != "exception_during_validation", exc.body
        else:
            json.dumps(result.graph, allow_nan=False)
            json.dumps(result.node_errors, allow_nan=False)
    assert time.perf_counter() - start < 20
