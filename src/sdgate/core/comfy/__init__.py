"""ComfyUI's node graphs without torch: the node types we run (``nodes``), how a prompt is checked
and bounded (``validate``, ``limits``, ``shapes``) and what ``/object_info`` says.

``engine/comfy`` runs a ``ValidatedGraph``; ``server/dialects/comfy`` validates, renders
``GraphInvalid.body`` as the 400 and answers ``/object_info`` from ``object_info``.
"""

from sdgate.core.comfy.limits import GraphLimits
from sdgate.core.comfy.nodes import NODES, SAMPLERS, SCHEDULERS, InputSpec, NodeSpec, sampler_for
from sdgate.core.comfy.validate import Choices, GraphInvalid, ValidatedGraph, object_info, validate_prompt

__all__ = [
    "NODES",
    "SAMPLERS",
    "SCHEDULERS",
    "Choices",
    "GraphInvalid",
    "GraphLimits",
    "InputSpec",
    "NodeSpec",
    "ValidatedGraph",
    "object_info",
    "sampler_for",
    "validate_prompt",
]
