"""The shipped model: standard layout, loads offline, and draws what it is asked for."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from sdgate.demo import analyser as an
from sdgate.demo import dataset as ds
from sdgate.demo import model as dm

STEPS = 20
CFG = 4.0  # the recommended guidance (see RESULTS.md)


@pytest.fixture(scope="module")
def pipe() -> Any:
    import torch
    from diffusers import StableDiffusionPipeline

    loaded = StableDiffusionPipeline.from_pretrained(
        str(dm.WEIGHTS_DIR), dtype=torch.float32, local_files_only=True
    )
    loaded.set_progress_bar_config(disable=True)
    return loaded


def _draw(pipe: Any, prompt: str, size: int, seed: int = 0) -> Any:
    import torch

    g = torch.Generator().manual_seed(seed)
    return pipe(prompt, height=size, width=size, num_inference_steps=STEPS, guidance_scale=CFG,
                generator=g).images[0]


def test_weights_are_a_small_standard_diffusers_folder() -> None:
    folder = dm.WEIGHTS_DIR
    assert folder.name == "sdgate-demo-shapes"
    index = json.loads((folder / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline"
    assert index["safety_checker"] == [None, None] and index["requires_safety_checker"] is False
    for part in ("unet", "vae", "text_encoder"):
        assert list((folder / part).glob("*.safetensors")), part
    total = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
    assert total <= 25 * 1024 * 1024
    shipped = (dm.TOKENIZER_DIR / "vocab.json").read_bytes()
    assert (folder / "tokenizer" / "vocab.json").read_bytes() == shipped


def test_loads_offline_in_fp32_with_its_own_vae_factor(pipe: Any) -> None:
    import torch

    assert pipe.unet.dtype == torch.float32 and pipe.vae.dtype == torch.float32
    assert pipe.vae_scale_factor == dm.VAE_FACTOR
    assert pipe.tokenizer.model_max_length == dm.MAX_TOKENS


@pytest.mark.parametrize("kind", ds.SHAPES)
def test_draws_each_shape_class(pipe: Any, kind: str) -> None:
    found = an.analyse(_draw(pipe, f"a large white {kind} on a black background", 256))
    assert found.background == "black"
    assert [(r.color, r.kind, r.position) for r in found.regions[:1]] == [("white", kind, "center")]


@pytest.mark.parametrize("color", ds.COLORS)
def test_draws_each_colour(pipe: Any, color: str) -> None:
    background = "gray" if color not in ("gray", "black", "brown") else "white"
    found = an.analyse(_draw(pipe, f"a large {color} circle on a {background} background", 256))
    assert found.background == background
    assert [(r.color, r.kind) for r in found.regions[:1]] == [(color, "circle")]


@pytest.mark.slow
@pytest.mark.parametrize("position", list(ds.POSITIONS))
def test_a1111_default_size_draws_the_scene_where_asked(pipe: Any, position: str) -> None:
    where = "in the center" if position == "center" else {"top": "at the top", "bottom": "at the bottom"}.get(
        position, f"on the {position}")
    found = an.analyse(_draw(pipe, f"a red square {where} on a blue background", 512))
    assert found.background == "blue"
    assert [(r.color, r.position) for r in found.regions] == [("red", position)]


def test_blank_weights_would_fail_these_checks(tmp_path: Path) -> None:
    """The checks above are real: an untrained model of the same architecture draws no scene."""
    import torch

    comps = dm.build_components(0)
    dm.save_pipeline(comps, tmp_path / "blank")
    from diffusers import StableDiffusionPipeline

    blank = StableDiffusionPipeline.from_pretrained(str(tmp_path / "blank"), dtype=torch.float32)
    blank.set_progress_bar_config(disable=True)
    found = an.analyse(_draw(blank, "a large white circle on a black background", 256))
    assert not (found.background == "black" and found.regions and found.regions[0].kind == "circle")
