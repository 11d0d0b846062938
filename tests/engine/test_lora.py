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


# --- SDXL's second text encoder ------------------------------------------------------------------


def make_sdxl_te_lora(path: Path, layout: str, seed: int, encoders: tuple[str, ...]) -> Path:
    """A LoRA on the q/v projections of the tiny SDXL's text encoders (``text_encoder_2``: te2)."""
    pipe, gen = tm.tiny_sdxl(0), torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}
    for component in encoders:
        for name, module in getattr(pipe, component).named_modules():
            if not name.endswith(("q_proj", "v_proj")):
                continue
            down = torch.randn(RANK, module.in_features, generator=gen) * 0.5
            up = torch.randn(module.out_features, RANK, generator=gen) * 0.5
            if layout == "kohya":
                prefix = "lora_te2_" if component == "text_encoder_2" else "lora_te1_"
                stem = prefix + name.replace(".", "_")
                state |= {f"{stem}.lora_down.weight": down, f"{stem}.lora_up.weight": up}
                state[f"{stem}.alpha"] = torch.tensor(float(RANK) / 2)
            else:
                stem = f"{component}.{name}"
                state |= {f"{stem}.lora_A.weight": down, f"{stem}.lora_B.weight": up}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path))
    return path


@pytest.mark.parametrize("layout", ["kohya", "diffusers"])
def test_sdxl_second_text_encoder_keys_are_patched(tmp_path: Path, layout: str) -> None:
    from safetensors.torch import load_file

    path = make_sdxl_te_lora(tmp_path / "te2.safetensors", layout, 3, ("text_encoder_2",))
    pairs, unknown = read_pairs(load_file(str(path)))
    assert unknown == 0 and pairs and {p.component for p in pairs} == {"text_encoder_2"}
    pipe = tm.tiny_sdxl(0)
    states = {
        c: {k: v.clone() for k, v in getattr(pipe, c).state_dict().items()}
        for c in ("text_encoder", "text_encoder_2", "unet")
    }

    def changed(component: str) -> list[str]:
        now = getattr(pipe, component).state_dict()
        return [k for k, v in now.items() if not torch.equal(v, states[component][k])]

    apply_loras(pipe, [ActiveLora("te2", path, 1.0, 0.0)])
    assert len(changed("text_encoder_2")) == len(pairs) and all(
        "_proj" in k for k in changed("text_encoder_2")
    )
    assert changed("text_encoder") == [] and changed("unet") == []
    apply_loras(pipe, [ActiveLora("te2", path, 0.0, 1.0)])  # the te weight drives te2 too
    assert changed("text_encoder_2") == []
    apply_loras(pipe, [])
    assert changed("text_encoder_2") == []


def test_kohya_te1_and_te2_together(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    path = make_sdxl_te_lora(tmp_path / "both.safetensors", "kohya", 4, ("text_encoder", "text_encoder_2"))
    pairs, unknown = read_pairs(load_file(str(path)))
    assert unknown == 0 and {p.component for p in pairs} == {"text_encoder", "text_encoder_2"}
    assert all(p.alpha == RANK / 2 for p in pairs)


@pytest.fixture(scope="module")
def sdxl_lora_engine(tiny_models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> DiffusersEngine:
    models = tmp_path_factory.mktemp("sdxl-lora-models")
    (models / "Stable-diffusion").symlink_to(tiny_models_dir / "Stable-diffusion")
    make_sdxl_te_lora(models / "Lora" / "xl2.safetensors", "kohya", 5, ("text_encoder_2",))
    settings = Settings(data_dir=tmp_path_factory.mktemp("data"), models_dir=models, device="cpu")
    return DiffusersEngine(settings, ModelCatalog(settings, builtin_dir=None))


def test_a_te2_lora_changes_an_sdxl_image(sdxl_lora_engine: DiffusersEngine) -> None:
    fields: dict[str, Any] = {"model": "tiny-sdxl", "steps": 2}
    base = pixels(generate(sdxl_lora_engine, **fields))[0]
    out = generate(sdxl_lora_engine, prompt="a red circle <lora:xl2:1>", **fields)
    assert not np.array_equal(base, pixels(out)[0])
    assert 'Lora hashes: "xl2: ' in out.images[0].infotext
    assert np.array_equal(base, pixels(generate(sdxl_lora_engine, **fields))[0])


# --- Lora hashes ------------------------------------------------------------------------------------


def tensor_sha256(path: Path) -> str:
    """kohya's / A1111's addnet hash, computed independently: sha256 of the bytes after the header."""
    import hashlib

    data = path.read_bytes()
    header = int.from_bytes(data[:8], "little")
    return hashlib.sha256(data[8 + header :]).hexdigest()


def test_addnet_hash_ignores_metadata(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    from sdgate.engine.lora import addnet_hash

    a = make_lora(tmp_path / "a.safetensors", "kohya", 0)
    b = tmp_path / "b.safetensors"
    save_file(load_file(str(a)), str(b), metadata={"ss_output_name": "renamed", "note": "x" * 100})
    assert a.read_bytes() != b.read_bytes()
    assert addnet_hash(a) == addnet_hash(b) == tensor_sha256(a)
    other = make_lora(tmp_path / "c.safetensors", "kohya", 1)
    assert addnet_hash(other) != addnet_hash(a)


def test_lora_hashes_in_the_infotext(lora_engine: DiffusersEngine) -> None:
    assert lora_engine.settings.models_dir is not None
    root = lora_engine.settings.models_dir / "Lora"
    ink, paper = (
        tensor_sha256(root / "ink.safetensors")[:12],
        tensor_sha256(root / "sub" / "paper.safetensors")[:12],
    )
    assert "Lora hashes" not in generate(lora_engine).images[0].infotext
    one = generate(lora_engine, prompt="a red circle <lora:ink:0.5>").images[0].infotext
    assert f'Lora hashes: "ink: {ink}", Version' in one
    both = generate(lora_engine, prompt="a red circle <lora:INK:1> <lora:paper:0>").images[0].infotext
    assert f'Lora hashes: "INK: {ink}, paper: {paper}"' in both  # as the prompt named them
    field = generate(lora_engine, loras=(LoraRef(name="paper"),)).images[0].infotext
    assert f'Lora hashes: "paper: {paper}"' in field
    assert "Lora hashes" not in generate(lora_engine, prompt="a red circle <lora:nope:1>").images[0].infotext


@pytest.mark.parametrize("make", [tm.tiny_sd, tm.tiny_sdxl], ids=["sd15", "sdxl"])
def test_original_layout_names_match_the_checkpoint_conversion(make: Any) -> None:
    """Every Linear/Conv of the UNet gets the name its weight has in a single-file checkpoint
    (``tests.tinymodels.unet_to_ldm``, which the loading tests round-trip through diffusers)."""
    from sdgate.engine.lora import sgm_name

    unet = make(0).unet
    ldm = tm.unet_to_ldm(unet.state_dict(), unet.config)
    by_tensor = {v.data_ptr(): k.removeprefix("model.diffusion_model.") for k, v in ldm.items()}
    checked = 0
    for name, module in unet.named_modules():
        if isinstance(module, torch.nn.Linear | torch.nn.Conv2d):
            expected = by_tensor[module.weight.data_ptr()].removesuffix(".weight")
            assert sgm_name(name, unet.config) == expected, name
            checked += 1
    assert checked > 20


def test_kohya_sdxl_unet_keys_in_the_original_layout(tmp_path: Path) -> None:
    """kohya's SDXL LoRAs name UNet modules as the original checkpoint does; they must patch the
    same weights as the same LoRA written with diffusers names."""
    pipe = tm.tiny_sdxl(0)
    gen = torch.Generator().manual_seed(9)
    ldm = {v.data_ptr(): k for k, v in tm.unet_to_ldm(pipe.unet.state_dict(), pipe.unet.config).items()}
    original: dict[str, torch.Tensor] = {}
    renamed: dict[str, torch.Tensor] = {}
    for name, module in pipe.unet.named_modules():
        wanted = name.endswith(("to_q", "to_k", "proj_in", "ff.net.2", "conv1", "time_emb_proj"))
        if not wanted or not isinstance(module, torch.nn.Linear | torch.nn.Conv2d):
            continue
        shape = (RANK, module.weight.shape[1], *module.weight.shape[2:])
        down = torch.randn(shape, generator=gen) * 0.3
        ones = [1] * (module.weight.dim() - 2)  # a conv's up is (out, rank, 1, 1)
        up = torch.randn(module.weight.shape[0], RANK, *ones, generator=gen) * 0.3
        ldm_name = ldm[module.weight.data_ptr()].removeprefix("model.diffusion_model.")
        ldm_name = ldm_name.removesuffix(".weight")
        for state, stem in ((original, ldm_name), (renamed, name)):
            key = "lora_unet_" + stem.replace(".", "_")
            state |= {f"{key}.lora_down.weight": down, f"{key}.lora_up.weight": up}
    assert any("input_blocks" in k for k in original) and any("output_blocks" in k for k in original)
    results = []
    for label, state in (("original", original), ("renamed", renamed)):
        path = tmp_path / f"{label}.safetensors"
        save_file(state, str(path))
        target = tm.tiny_sdxl(0)
        before = {k: v.clone() for k, v in target.unet.state_dict().items()}
        apply_loras(target, [ActiveLora(label, path, 1.0, 1.0)])
        after = target.unet.state_dict()
        changed = {k for k in before if not torch.equal(before[k], after[k])}
        results.append((changed, {k: after[k] for k in changed}))
    (changed_a, weights_a), (changed_b, weights_b) = results
    assert len(changed_a) == len(original) // 2
    assert changed_a == changed_b
    assert all(torch.equal(weights_a[k], weights_b[k]) for k in changed_a)
