"""The content blocklist reads a ComfyUI graph's prompt texts, naming the node and input."""

from __future__ import annotations

from sdgate.core.requests import GraphRequest
from sdgate.server.content import prompts


def test_every_text_encoder_input_of_a_graph_is_checked() -> None:
    graph = {
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "model.safetensors"}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a red circle", "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": ["4", 1]}},
        "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "not a prompt", "images": ["8", 0]}},
    }
    found = prompts(GraphRequest(graph=graph, outputs=("9",)))
    assert sorted(found) == [("prompt.6.text", "a red circle"), ("prompt.7.text", "blurry")]
