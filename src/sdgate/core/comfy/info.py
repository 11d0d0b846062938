"""What ``GET /object_info`` says about our node types, in ComfyUI's V1 NodeInfo shape
(``reference/other_apis.md`` §1.6), and the ``[TYPE, options]`` input configs that validation
errors echo (ComfyUI's ``input_config``): one function gives both, so they never disagree.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sdgate.core.comfy.limits import GraphLimits
from sdgate.core.comfy.nodes import NODES, SAMPLERS, SCHEDULERS, InputSpec, NodeSpec


@dataclass(frozen=True)
class Choices:
    """What COMBO inputs may name, as ComfyUI lists them (file names with extensions, relative
    paths with "/"). ``image_sizes``: the (width, height) of input images where the caller knows
    them, so sizes derived from them are bounded before the job exists."""

    checkpoints: Sequence[str] = ()
    loras: Sequence[str] = ()
    vae: Sequence[str] = ()
    upscale_models: Sequence[str] = ()
    input_images: Sequence[str] = ()
    image_sizes: Mapping[str, tuple[int, int]] = field(default_factory=dict)
    controlnet: Sequence[str] = ()  # the ControlNet files (``controlnet/``, ``ControlNet/``)

    def options(self, name: str) -> Sequence[str]:
        if name == "samplers":
            return SAMPLERS
        if name == "schedulers":
            return SCHEDULERS
        values: Sequence[str] = getattr(self, name)
        return values


# --- object_info ------------------------------------------------------------------------------


def object_info(
    choices: Choices, class_type: str | None = None, *, limits: GraphLimits | None = None
) -> dict[str, Any]:
    """``GET /object_info`` (every node) or ``/object_info/{class_type}`` ({} for an unknown one),
    in ComfyUI's V1 NodeInfo shape. With ``limits``, ranges show our tighter maxima."""
    if class_type is None:
        return {name: node_info(spec, choices, limits) for name, spec in NODES.items()}
    spec = NODES.get(class_type)
    return {} if spec is None else {class_type: node_info(spec, choices, limits)}


def node_info(spec: NodeSpec, choices: Choices, limits: GraphLimits | None = None) -> dict[str, Any]:
    required = {i.name: input_config(i, choices, limits) for i in spec.inputs if i.required}
    optional = {i.name: input_config(i, choices, limits) for i in spec.inputs if not i.required}
    inputs: dict[str, Any] = {"required": required}
    if optional:
        inputs["optional"] = optional
    if spec.hidden:
        inputs["hidden"] = dict(spec.hidden)
    info: dict[str, Any] = {
        "input": inputs,
        "input_order": {key: list(value) for key, value in inputs.items()},
        "output": list(spec.outputs),
        "output_is_list": [False] * len(spec.outputs),
        "output_name": list(spec.output_names),
        "name": spec.class_type,
        "display_name": spec.display_name,
        "description": spec.description,
        "python_module": spec.python_module,
        "category": spec.category,
        "output_node": spec.output_node,
    }
    if spec.deprecated:
        info["deprecated"] = True
    if spec.output_tooltips:
        info["output_tooltips"] = list(spec.output_tooltips)
    return info


def input_config(spec: InputSpec, choices: Choices, limits: GraphLimits | None = None) -> list[Any]:
    """One input as ComfyUI lists it: ``[TYPE, options]`` (a combo's TYPE is its list of values),
    or ``[TYPE]`` when it has no options."""
    type_: Any = list(combo_values(spec, choices)) if spec.type == "COMBO" else spec.type
    options: dict[str, Any] = {}
    if spec.default is not None and spec.type != "COMBO":
        options["default"] = spec.default
    for key in ("min", "max", "step", "round"):
        value = getattr(spec, key)
        if value is not None:
            options[key] = value
    if limits is not None and spec.type == "INT" and "max" in options:
        tighter = limits.input_max(spec.name)
        if tighter is not None and tighter < options["max"]:
            options["max"] = tighter
    options.update(spec.extra)
    return [type_, options] if options else [type_]


def combo_values(spec: InputSpec, choices: Choices) -> Sequence[str]:
    if isinstance(spec.options, str):
        return choices.options(spec.options)
    return spec.options or ()
