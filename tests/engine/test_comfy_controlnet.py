"""ControlNet graphs (ControlNetLoader, ControlNetApply, ControlNetApplyAdvanced) run by
``engine.comfy.executor`` on the tiny SD 1.5, with tiny random-weight ControlNets made from its UNet
(``ControlNetModel.from_unet``) in a ComfyUI-layout ``controlnet/`` folder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from sdgate.core.comfy import NODES
from sdgate.core.errors import InvalidRequest, NotFound
from sdgate.core.models import ModelCatalog
from sdgate.engine.comfy.executor import cache_for, cached_nodes
from sdgate.engine.diffusers_engine import DiffusersEngine
from sdgate.engine.null import NullEngine
from sdgate.settings import Settings
from tests import comfy_graphs
from tests.engine.test_comfy_executor import gradient, pixels, run

CKPT = "tiny.safetensors"
XL = "tiny-sdxl.safetensors"
CANNY = "tiny-canny/diffusion_pytorch_model.safetensors"  # a diffusers folder, as ComfyUI lists it
DEPTH = "tiny-depth.safetensors"  # a single file in diffusers' key layout
XL_CANNY = "xl/tiny-xl/diffusion_pytorch_model.safetensors"
SIZE = 64
IMAGE = "edges.png"


def write_controlnet(path: Path, seed: int, *, xl: bool = False) -> None:
    """A ControlNet for the tiny SD 1.5 (or XL) UNet; its zero convolutions are random, so it
    guides, and its hint embedding is scaled so the control map matters about as much as the latents."""
    from diffusers import ControlNetModel
    from safetensors.torch import save_file

    from tests import tinymodels as tm

    net = ControlNetModel.from_unet((tm.tiny_sdxl(0) if xl else tm.tiny_sd(0)).unet)
    torch.manual_seed(seed)
    with torch.no_grad():
        for block in (*net.controlnet_down_blocks, net.controlnet_mid_block):
            block.weight.normal_(0.0, 0.3)
            block.bias.normal_(0.0, 0.1)
        for conv in net.controlnet_cond_embedding.modules():
            if isinstance(conv, torch.nn.Conv2d):
                conv.weight.normal_(0.0, 1.5 / conv.weight[0].numel() ** 0.5)
    if path.suffix:
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))
    else:
        net.save_pretrained(str(path))


@pytest.fixture(scope="module")
def cn_engine(tiny_models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> DiffusersEngine:
    models = tmp_path_factory.mktemp("comfy-cn-models")
    (models / "checkpoints").mkdir()
    for ours, theirs in ((CKPT, "tiny-sd15.safetensors"), (XL, XL)):
        (models / "checkpoints" / ours).symlink_to(tiny_models_dir / "Stable-diffusion" / theirs)
    write_controlnet(models / "controlnet" / "tiny-canny", seed=1)
    write_controlnet(models / "ControlNet" / DEPTH, seed=2)
    write_controlnet(models / "controlnet" / "xl" / "tiny-xl", seed=3, xl=True)
    settings = Settings(data_dir=tmp_path_factory.mktemp("data"), models_dir=models, device="cpu")
    return DiffusersEngine(settings, ModelCatalog(settings, builtin_dir=None))


def control_map() -> Image.Image:
    """An edge-like map: white lines on black."""
    array = np.zeros((SIZE, SIZE, 3), np.uint8)
    array[::8] = 255
    array[:, 20:24] = 255
    return Image.fromarray(array, "RGB")


def graph(name: str = CANNY, **kwargs: Any) -> dict[str, Any]:
    return comfy_graphs.controlnet(
        CKPT, name, IMAGE, seed=7, steps=3, width=SIZE, height=SIZE, cfg=7.0, positive="a red circle",
        negative="blurry", **kwargs,
    )  # fmt: skip


def plain() -> dict[str, Any]:
    return comfy_graphs.txt2img(
        CKPT, seed=7, steps=3, width=SIZE, height=SIZE, cfg=7.0, positive="a red circle", negative="blurry"
    )


def draw(engine: Any, prompt: dict[str, Any], picture: Image.Image | None = None) -> np.ndarray:
    return pixels(run(engine, prompt, pictures=(picture or control_map(),), images=(IMAGE,)))


def stack(prompt: dict[str, Any], name: str, strength: float, node_id: str = "20") -> dict[str, Any]:
    """One more ControlNetApply on the sampler's positive, after those already there."""
    prompt[f"{node_id}l"] = {"class_type": "ControlNetLoader", "inputs": {"control_net_name": name}}
    prompt[node_id] = {
        "class_type": "ControlNetApply",
        "inputs": {"conditioning": prompt["3"]["inputs"]["positive"], "control_net": [f"{node_id}l", 0],
                   "image": ["10", 0], "strength": strength},
    }  # fmt: skip
    prompt["3"]["inputs"]["positive"] = [node_id, 0]
    return prompt


def differs(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).mean())


def test_the_catalog_lists_the_names_the_graphs_use(cn_engine: DiffusersEngine) -> None:
    names = [f.relpath for f in cn_engine.catalog.list_files("controlnet")]  # what /object_info offers
    assert CANNY in names and DEPTH in names


@pytest.mark.parametrize("advanced", [False, True])
def test_strength_zero_is_the_plain_graph_and_one_differs(cn_engine: DiffusersEngine, advanced: bool) -> None:
    base = draw(cn_engine, plain())
    np.testing.assert_array_equal(base, draw(cn_engine, graph(strength=0.0, advanced=advanced)))
    guided = draw(cn_engine, graph(strength=1.0, advanced=advanced))
    assert guided.shape == base.shape and differs(guided, base) > 1.0


def test_an_sdxl_controlnet_guides_an_sdxl_model(cn_engine: DiffusersEngine) -> None:
    def xl(strength: float) -> dict[str, Any]:
        prompt = graph(XL_CANNY, strength=strength, advanced=True)
        prompt["4"]["inputs"]["ckpt_name"] = XL
        return prompt

    base = plain()
    base["4"]["inputs"]["ckpt_name"] = XL
    base_pixels = draw(cn_engine, base)
    np.testing.assert_array_equal(draw(cn_engine, xl(0.0)), base_pixels)
    assert differs(draw(cn_engine, xl(1.0)), base_pixels) > 0.5


def test_the_infotext_names_the_positives_controlnets(cn_engine: DiffusersEngine) -> None:
    out = run(cn_engine, stack(graph(strength=0.5), DEPTH, 1.0), pictures=(control_map(),), images=(IMAGE,))
    info = out.images[0].infotext
    assert (
        'ControlNet 0: "Module: none, Model: tiny-canny, Weight: 0.5, Guidance Start: 0, Guidance End: 1"'
        in info
    )
    assert 'ControlNet 1: "Module: none, Model: tiny-depth, Weight: 1,' in info
    assert "ControlNet" not in run(cn_engine, plain()).images[0].infotext


def test_a_single_file_controlnet_guides_too(cn_engine: DiffusersEngine) -> None:
    base = draw(cn_engine, plain())
    assert differs(draw(cn_engine, graph(DEPTH)), base) > 1.0
    assert differs(draw(cn_engine, graph(DEPTH)), draw(cn_engine, graph(CANNY))) > 1.0


def test_the_control_image_matters(cn_engine: DiffusersEngine) -> None:
    edges = draw(cn_engine, graph())
    other = draw(cn_engine, graph(), picture=gradient())
    assert differs(edges, other) > 0.5


def test_the_start_end_window(cn_engine: DiffusersEngine) -> None:
    # Euler "normal" over 3 steps: the steps sit at about 0, 0.5 and 1 of the model's schedule.
    base = draw(cn_engine, plain())
    full = draw(cn_engine, graph(advanced=True))
    late = draw(cn_engine, graph(advanced=True, start_percent=0.4, end_percent=1.0))
    assert differs(late, full) > 0.5 and differs(late, base) > 0.5
    empty = draw(cn_engine, graph(advanced=True, start_percent=0.6, end_percent=0.9))  # no step inside
    np.testing.assert_array_equal(empty, base)


def test_apply_guides_the_positive_only_and_advanced_both(cn_engine: DiffusersEngine) -> None:
    apply = draw(cn_engine, graph())
    advanced = draw(cn_engine, graph(advanced=True))
    assert differs(apply, advanced) > 0.5
    # Advanced equals ControlNetApply on each prompt (one UNet batch there, two calls here).
    both = graph()
    both["13"] = {
        "class_type": "ControlNetApply",
        "inputs": {"conditioning": ["7", 0], "control_net": ["11", 0], "image": ["10", 0], "strength": 1.0},
    }
    both["3"]["inputs"]["negative"] = ["13", 0]
    np.testing.assert_allclose(draw(cn_engine, both), advanced, atol=2.0)


def test_two_controlnets_stack(cn_engine: DiffusersEngine) -> None:
    one = draw(cn_engine, graph())
    two = draw(cn_engine, stack(graph(), DEPTH, 1.0))
    assert differs(two, one) > 0.5 and differs(two, draw(cn_engine, graph(DEPTH))) > 0.5
    np.testing.assert_array_equal(draw(cn_engine, stack(graph(), DEPTH, 0.0)), one)
    # The same ControlNet twice at half strength is that ControlNet once at full strength
    # (residuals add), within float error.
    halves = stack(graph(strength=0.5), CANNY, 0.5)
    np.testing.assert_allclose(draw(cn_engine, halves), one, atol=2.0)


def test_cache_keys_follow_the_file_and_the_image(cn_engine: DiffusersEngine) -> None:
    cache_for(cn_engine).clear()
    first = run(cn_engine, graph(), pictures=(control_map(),), images=(IMAGE,))
    again = run(cn_engine, graph(), pictures=(control_map(),), images=(IMAGE,))
    assert {"3", "12"} <= set(cached_nodes(again.notes))
    np.testing.assert_array_equal(pixels(first), pixels(again))
    other_image = run(cn_engine, graph(), pictures=(gradient(),), images=(IMAGE,))
    assert "3" not in cached_nodes(other_image.notes) and "12" not in cached_nodes(other_image.notes)
    other_net = run(cn_engine, graph(DEPTH), pictures=(control_map(),), images=(IMAGE,))
    assert "3" not in cached_nodes(other_net.notes) and {"6", "7"} <= set(cached_nodes(other_net.notes))


def test_a_missing_file_and_another_family_are_refused_naming_the_node(cn_engine: DiffusersEngine) -> None:
    with pytest.raises(NotFound) as missing:
        draw(cn_engine, graph("nothing.safetensors"))
    assert missing.value.field == "node:11" and missing.value.comfy_node_type == "ControlNetLoader"  # type: ignore[attr-defined]
    xl = graph()
    xl["4"]["inputs"]["ckpt_name"] = XL
    with pytest.raises(InvalidRequest, match="ControlNet") as family:
        draw(cn_engine, xl)
    assert family.value.comfy_node_type == "KSampler"  # type: ignore[attr-defined]


def test_the_null_engine_runs_controlnet_graphs_at_the_same_sizes(cn_engine: DiffusersEngine) -> None:
    null = NullEngine(cn_engine.settings, cn_engine.catalog)
    for prompt in (graph(), graph(advanced=True), stack(graph(), DEPTH, 1.0)):
        out = run(null, prompt, pictures=(control_map(),), images=(IMAGE,))
        assert [img.image.size for img in out.images] == [(SIZE, SIZE)]
    assert {"ControlNetLoader", "ControlNetApply", "ControlNetApplyAdvanced"} <= set(NODES)
