"""LoRA files made here, in kohya and diffusers layouts, patched into the tiny SD 1.5."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from sdgate.core.models import ModelCatalog
from sdgate.core.requests import LoraRef
from sdgate.engine.diffusers_engine import DiffusersEngine
from sdgate.engine.lora import ActiveLora, apply_loras, list_loras, read_pairs
from sdgate.settings import Settings
from tests import tinymodels as tm
from tests.engine.conftest import generate, pixels

RANK = 4


def _targets(pipe: Any) -> list[tuple[str, str, torch.nn.Module]]:
    """(component, module path, module) of every attention projection LoRAs usually train."""
    out = []
    for component, suffixes in (
        ("unet", ("to_q", "to_k", "to_v", "to_out.0")),
        ("text_encoder", ("q_proj", "v_proj")),
    ):
        for name, module in getattr(pipe, component).named_modules():
            if name.endswith(suffixes) and isinstance(module, torch.nn.Linear):
                out.append((component, name, module))
    return out


def make_lora(path: Path, layout: str, seed: int) -> Path:
    gen = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}
    for component, name, module in _targets(tm.tiny_sd(0)):
        down = torch.randn(RANK, module.in_features, generator=gen) * 0.5
        up = torch.randn(module.out_features, RANK, generator=gen) * 0.5
        if layout == "kohya":
            prefix = "lora_unet_" if component == "unet" else "lora_te_text_model_"
            stem = prefix + name.replace(".", "_")
            state |= {f"{stem}.lora_down.weight": down, f"{stem}.lora_up.weight": up}
            state[f"{stem}.alpha"] = torch.tensor(float(RANK))
        else:
            stem = f"unet.{name}" if component == "unet" else f"text_encoder.text_model.{name}"
            state |= {f"{stem}.lora_A.weight": down, f"{stem}.lora_B.weight": up}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path), metadata={"ss_output_name": path.stem.upper()} if layout == "kohya" else None)
    return path


@pytest.fixture(scope="module")
def lora_engine(tiny_models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> DiffusersEngine:
    models = tmp_path_factory.mktemp("lora-models")
    (models / "Stable-diffusion").symlink_to(tiny_models_dir / "Stable-diffusion")
    make_lora(models / "Lora" / "ink.safetensors", "kohya", 1)
    make_lora(models / "Lora" / "sub" / "paper.safetensors", "diffusers", 2)
    settings = Settings(data_dir=tmp_path_factory.mktemp("data"), models_dir=models, device="cpu")
    return DiffusersEngine(settings, ModelCatalog(settings, builtin_dir=None))


def test_both_layouts_are_read_whole(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    for layout in ("kohya", "diffusers"):
        state = load_file(str(make_lora(tmp_path / f"{layout}.safetensors", layout, 0)))
        pairs, unknown = read_pairs(state)
        assert unknown == 0 and len(pairs) == len(_targets(tm.tiny_sd(0)))


def test_patching_and_restoring_is_exact(tmp_path: Path) -> None:
    pipe = tm.tiny_sd(0)
    before = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    path = make_lora(tmp_path / "a.safetensors", "kohya", 0)
    apply_loras(pipe, [ActiveLora("a", path, 1.0, 1.0)])
    changed = [k for k, v in pipe.unet.state_dict().items() if not torch.equal(v, before[k])]
    assert changed and all("to_" in k for k in changed)
    apply_loras(pipe, [])
    assert all(torch.equal(v, before[k]) for k, v in pipe.unet.state_dict().items())


def test_listing_reads_the_alias(lora_engine: DiffusersEngine) -> None:
    found = {f.name: f.alias for f in list_loras(lora_engine.catalog)}
    assert found == {"ink": "INK", "paper": "paper"}


def test_weight_changes_the_image_and_zero_is_the_base(lora_engine: DiffusersEngine) -> None:
    base = pixels(generate(lora_engine))[0]
    full = pixels(generate(lora_engine, prompt="a red circle <lora:ink:1>"))[0]
    half = pixels(generate(lora_engine, prompt="a red circle <lora:ink:0.5>"))[0]
    assert not np.array_equal(base, full) and not np.array_equal(full, half)
    assert np.array_equal(base, pixels(generate(lora_engine, prompt="a red circle <lora:ink:0>"))[0])
    assert np.array_equal(base, pixels(generate(lora_engine))[0])  # unloaded between jobs
    assert np.array_equal(full, pixels(generate(lora_engine, prompt="a red circle <lora:INK:1>"))[0])


def test_diffusers_layout_several_at_once_and_the_request_field(lora_engine: DiffusersEngine) -> None:
    base = pixels(generate(lora_engine))[0]
    paper = pixels(generate(lora_engine, prompt="a red circle <lyco:paper:1>"))[0]
    ink = pixels(generate(lora_engine, prompt="a red circle <lora:ink:1>"))[0]
    both = pixels(generate(lora_engine, prompt="a red circle <lora:ink:1> <lora:paper:1>"))[0]
    assert not np.array_equal(base, paper)
    assert not np.array_equal(both, paper) and not np.array_equal(both, ink)
    field = pixels(generate(lora_engine, loras=(LoraRef(name="paper"),)))[0]
    assert np.array_equal(paper, field)


def test_text_encoder_and_unet_weights_are_separate(lora_engine: DiffusersEngine) -> None:
    base = pixels(generate(lora_engine))[0]
    te_only = pixels(generate(lora_engine, prompt="a red circle <lora:ink:1:0>"))[0]
    unet_only = pixels(generate(lora_engine, prompt="a red circle <lora:ink:te=0:unet=1>"))[0]
    assert not np.array_equal(base, te_only) and not np.array_equal(base, unet_only)
    assert not np.array_equal(te_only, unet_only)


def test_a_missing_lora_is_not_an_error(lora_engine: DiffusersEngine) -> None:
    base = pixels(generate(lora_engine))[0]
    assert np.array_equal(base, pixels(generate(lora_engine, prompt="a red circle <lora:nope:1>"))[0])
