"""ControlNetLoader, ControlNetApply and ControlNetApplyAdvanced in ``core.comfy``: their specs as
``/object_info`` shows them, and how ``validate_prompt`` checks graphs that use them."""

from __future__ import annotations

import json
from typing import Any

import pytest

from sdgate.core.comfy import (
    NODES,
    Choices,
    GraphInvalid,
    GraphLimits,
    ValidatedGraph,
    object_info,
    validate_prompt,
)
from tests import comfy_graphs as graphs

CKPT = "v1-5-pruned-emaonly.safetensors"
CANNY = "control_v11p_sd15_canny.safetensors"
CHOICES = Choices(
    checkpoints=(CKPT,),
    input_images=("edges.png",),
    controlnet=(CANNY, "sd15/depth/diffusion_pytorch_model.safetensors"),
)
LIMITS = GraphLimits()


def ok(prompt: Any, choices: Choices = CHOICES, limits: GraphLimits = LIMITS) -> ValidatedGraph:
    return validate_prompt(prompt, choices, limits)


def reasons(prompt: Any, node_id: str, choices: Choices = CHOICES, limits: GraphLimits = LIMITS) -> list[Any]:
    with pytest.raises(GraphInvalid) as caught:
        validate_prompt(prompt, choices, limits)
    body = caught.value.body
    json.dumps(body, allow_nan=False)
    assert body["error"]["type"] == "prompt_outputs_failed_validation"
    errors: list[Any] = body["node_errors"][node_id]["errors"]
    return errors


def cn_graph(**kwargs: Any) -> dict[str, Any]:
    return graphs.controlnet(CKPT, CANNY, "edges.png", **kwargs)


# --- specs and object_info ---------------------------------------------------------------------


def test_object_info_lists_the_controlnet_files_as_the_loaders_combo() -> None:
    info = object_info(CHOICES, "ControlNetLoader")["ControlNetLoader"]
    assert info["input"]["required"] == {"control_net_name": [list(CHOICES.controlnet)]}
    assert info["output"] == ["CONTROL_NET"] and info["output_name"] == ["CONTROL_NET"]
    assert (info["display_name"], info["category"]) == ("Load ControlNet Model", "loaders")
    assert "deprecated" not in info
    # Callers that build Choices without ControlNet files still work: the list is empty.
    assert object_info(Choices(), "ControlNetLoader")["ControlNetLoader"]["input"]["required"] == {
        "control_net_name": [[]]
    }


def test_object_info_controlnet_apply_is_comfyuis_deprecated_node() -> None:
    info = object_info(CHOICES, "ControlNetApply")["ControlNetApply"]
    required = info["input"]["required"]
    assert list(required) == ["conditioning", "control_net", "image", "strength"]
    assert required["control_net"] == ["CONTROL_NET"] and required["image"] == ["IMAGE"]
    assert required["strength"] == ["FLOAT", {"default": 1.0, "min": 0.0, "max": 10.0, "step": 0.01}]
    assert info["output"] == ["CONDITIONING"]
    assert (info["display_name"], info["category"]) == ("Apply ControlNet (OLD)", "conditioning/controlnet")
    assert info["deprecated"] is True


def test_object_info_controlnet_apply_advanced() -> None:
    info = object_info(CHOICES, "ControlNetApplyAdvanced")["ControlNetApplyAdvanced"]
    required = info["input"]["required"]
    assert list(required) == [
        "positive", "negative", "control_net", "image", "strength", "start_percent", "end_percent",
    ]  # fmt: skip
    assert required["start_percent"] == ["FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.001}]
    assert required["end_percent"] == ["FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.001}]
    assert info["input"]["optional"] == {"vae": ["VAE"]}
    assert info["input_order"] == {"required": list(required), "optional": ["vae"]}
    assert info["output"] == ["CONDITIONING", "CONDITIONING"]
    assert info["output_name"] == ["positive", "negative"]
    assert info["display_name"] == "Apply ControlNet" and "deprecated" not in info


def test_every_node_lists_in_the_full_object_info() -> None:
    info = object_info(CHOICES)
    assert {"ControlNetLoader", "ControlNetApply", "ControlNetApplyAdvanced"} <= set(info)
    json.dumps(info, allow_nan=False)
    assert NODES["ControlNetApplyAdvanced"].input("vae").required is False  # type: ignore[union-attr]


# --- validation ----------------------------------------------------------------------------------


@pytest.mark.parametrize("advanced", [False, True])
def test_a_controlnet_graph_validates_with_its_nodes(advanced: bool) -> None:
    validated = ok(cn_graph(advanced=advanced))
    assert {"10", "11", "12"} <= set(validated.graph)
    assert validated.graph["11"]["inputs"] == {"control_net_name": CANNY}
    assert validated.input_images == ("edges.png",)
    assert validated.outputs == ("9",) and validated.image_count == 1
    node = validated.graph["12"]
    assert node["class_type"] == ("ControlNetApplyAdvanced" if advanced else "ControlNetApply")
    assert node["inputs"]["control_net"] == ["11", 0] and node["inputs"]["image"] == ["10", 0]
    assert isinstance(node["inputs"]["strength"], float)


def test_a_file_inside_a_folder_is_named_by_its_relative_path() -> None:
    prompt = graphs.controlnet(CKPT, "sd15/depth/diffusion_pytorch_model.safetensors", "edges.png")
    assert ok(prompt).graph["11"]["inputs"]["control_net_name"].startswith("sd15/depth/")


def test_advanced_takes_the_optional_vae_and_casts_its_numbers() -> None:
    prompt = cn_graph(advanced=True)
    prompt["12"]["inputs"].update(vae=["4", 2], strength="0.5", start_percent=0, end_percent="0.75")
    inputs = ok(prompt).graph["12"]["inputs"]
    assert (inputs["strength"], inputs["start_percent"], inputs["end_percent"]) == (0.5, 0.0, 0.75)
    assert inputs["vae"] == ["4", 2]


def test_an_unknown_controlnet_file_is_value_not_in_list() -> None:
    prompt = graphs.controlnet(CKPT, "missing.pth", "edges.png")
    (reason,) = reasons(prompt, "11")
    assert reason == {
        "type": "value_not_in_list",
        "message": "Value not in list",
        "details": f"control_net_name: 'missing.pth' not in {list(CHOICES.controlnet)}",
        "extra_info": {
            "input_name": "control_net_name",
            "input_config": [list(CHOICES.controlnet), {}],
            "received_value": "missing.pth",
        },
    }
    (reason,) = reasons(cn_graph(), "11", choices=Choices(checkpoints=(CKPT,), input_images=("edges.png",)))
    assert reason["type"] == "value_not_in_list"


@pytest.mark.parametrize(
    ("name", "value", "kind"),
    [
        ("strength", 10.5, "value_bigger_than_max"),
        ("strength", -0.1, "value_smaller_than_min"),
        ("start_percent", 1.5, "value_bigger_than_max"),
        ("end_percent", -1, "value_smaller_than_min"),
        ("strength", float("nan"), "invalid_input_type"),
    ],
)
def test_numbers_out_of_range_are_refused(name: str, value: float, kind: str) -> None:
    prompt = cn_graph(advanced=True)
    prompt["12"]["inputs"][name] = value
    (reason,) = reasons(prompt, "12")
    assert reason["type"] == kind and reason["extra_info"]["input_name"] == name


def test_missing_inputs_and_wrong_links_are_refused() -> None:
    prompt = cn_graph()
    del prompt["12"]["inputs"]["image"]
    (reason,) = reasons(prompt, "12")
    assert (reason["type"], reason["details"]) == ("required_input_missing", "image")
    prompt = cn_graph()
    prompt["12"]["inputs"]["control_net"] = ["4", 0]  # a MODEL, not a CONTROL_NET
    (reason,) = reasons(prompt, "12")
    assert reason["type"] == "return_type_mismatch"
    assert reason["details"] == "control_net, received_type(MODEL) mismatch input_type(CONTROL_NET)"
    prompt = cn_graph(advanced=True)
    prompt["3"]["inputs"]["negative"] = ["12", 2]  # ControlNetApplyAdvanced has two outputs
    (reason,) = reasons(prompt, "3")
    assert reason["type"] == "bad_linked_input"


def test_stacked_controlnets_validate_up_to_the_limit() -> None:
    prompt = cn_graph()
    previous = "12"
    for i in range(3):  # three more ControlNetApply nodes chained after the first
        node_id = str(20 + i)
        prompt[node_id] = {
            "class_type": "ControlNetApply",
            "inputs": {"conditioning": [previous, 0], "control_net": ["11", 0], "image": ["10", 0],
                       "strength": 0.5},
        }  # fmt: skip
        previous = node_id
    prompt["3"]["inputs"]["positive"] = [previous, 0]
    assert ok(prompt, limits=GraphLimits(max_controlnets=4)).graph["22"]["inputs"]["conditioning"] == [
        "21",
        0,
    ]
    errors = reasons(prompt, "22", limits=GraphLimits(max_controlnets=3))
    assert errors[-1]["type"] == "custom_validation_failed"
    assert errors[-1]["details"] == (
        "control_net - the prompt applies 4 ControlNets, over the limit of 3 (max_controlnets)"
    )
