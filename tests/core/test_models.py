"""The model catalog: discovery in both layouts, names and aliases, hashes, families, defaults.

Checkpoints here are header-only safetensors files (shapes, no data): the catalog never reads
weights, so these are exactly what it sees of a real file.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from sdgate.core.errors import ModelNotFound
from sdgate.core.models import (
    ModelCatalog,
    compute_sha256,
    detect_family,
    list_files,
    read_ckpt_shapes,
    read_safetensors_shapes,
    vae_factor_from_shapes,
)
from sdgate.settings import Settings

UNET = "model.diffusion_model.input_blocks.0.0.weight"


def _vae(levels: int) -> dict[str, tuple[int, ...]]:
    return {
        f"first_stage_model.encoder.down.{i}.block.0.conv1.weight": (128, 128, 3, 3) for i in range(levels)
    }


SD1 = {
    UNET: (320, 4, 3, 3),
    "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight": (49408, 768),
    **_vae(4),
}
SD2 = {UNET: (320, 4, 3, 3), "cond_stage_model.model.token_embedding.weight": (49408, 1024), **_vae(4)}
SDXL = {
    UNET: (320, 4, 3, 3),
    "conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.weight": (49408, 768),
    "conditioner.embedders.1.model.token_embedding.weight": (49408, 1280),
    **_vae(4),
}


def write_header(path: Path, shapes: dict[str, tuple[int, ...]], payload: bytes = b"") -> Path:
    header = {k: {"dtype": "F16", "shape": list(v), "data_offsets": [0, 0]} for k, v in shapes.items()}
    header["__metadata__"] = {"format": "pt"}  # type: ignore[assignment]
    raw = json.dumps(header).encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(len(raw).to_bytes(8, "little") + raw + payload)
    return path


def write_diffusers(
    folder: Path,
    *,
    cls: str = "StableDiffusionPipeline",
    cross: int = 768,
    sample: int = 64,
    levels: int = 4,
    prediction: str = "epsilon",
) -> Path:
    for sub, data in {
        "model_index.json": {"_class_name": cls},
        "unet/config.json": {"cross_attention_dim": cross, "sample_size": sample},
        "vae/config.json": {"block_out_channels": [32] * levels},
        "scheduler/scheduler_config.json": {"prediction_type": prediction},
    }.items():
        (folder / sub).parent.mkdir(parents=True, exist_ok=True)
        (folder / sub).write_text(json.dumps(data))
    write_header(folder / "unet" / "diffusion_pytorch_model.safetensors", {})
    return folder


@pytest.fixture
def models(tmp_path: Path) -> Path:
    root = tmp_path / "models"
    write_header(root / "Stable-diffusion" / "v1-5.safetensors", SD1, b"one")
    write_header(root / "Stable-diffusion" / "sub" / "Anime Model.safetensors", SD1, b"two")
    write_header(root / "Stable-diffusion" / "v2.safetensors", SD2)
    (root / "Stable-diffusion" / "v2.yaml").write_text('parameterization: "v"\n')
    write_header(root / "checkpoints" / "xl.safetensors", SDXL)
    write_diffusers(
        root / "Stable-diffusion" / "diff-xl", cls="StableDiffusionXLPipeline", cross=2048, sample=128
    )
    (root / "Stable-diffusion" / "notes.txt").write_text("not a model")
    return root


def catalog_for(tmp_path: Path, models: Path, builtin: Path | None = None, **kw: Any) -> ModelCatalog:
    return ModelCatalog(Settings(data_dir=tmp_path / "data", models_dir=models, **kw), builtin_dir=builtin)


def test_finds_both_layouts_recursively_and_diffusers_folders(tmp_path: Path, models: Path) -> None:
    catalog = catalog_for(tmp_path, models)
    infos = {m.name: m for m in catalog.list()}
    assert set(infos) == {"v1-5", "sub_Anime Model", "v2", "xl", "diff-xl"}
    anime = infos["sub_Anime Model"]
    assert anime.relpath == "sub/Anime Model.safetensors"
    assert anime.title == "sub/Anime Model.safetensors"  # no hash computed yet
    assert anime.filename == (models / "Stable-diffusion" / "sub" / "Anime Model.safetensors").resolve()
    assert anime.format == "safetensors" and not anime.builtin
    assert infos["diff-xl"].format == "diffusers"
    # the weights inside a diffusers folder are not checkpoints of their own
    assert not any("diffusion_pytorch_model" in m.relpath for m in catalog.list())


def test_families_sizes_and_configs(tmp_path: Path, models: Path) -> None:
    infos = {m.name: m for m in catalog_for(tmp_path, models).list()}
    assert infos["v1-5"].family == "sd1" and infos["v1-5"].native_width == 512
    assert infos["v2"].family == "sd2" and infos["v2"].v_prediction and infos["v2"].native_width == 768
    assert infos["v2"].config == (models / "Stable-diffusion" / "v2.yaml").resolve()
    assert infos["xl"].family == "sdxl" and infos["xl"].native_height == 1024
    assert infos["diff-xl"].family == "sdxl" and infos["diff-xl"].native_width == 1024
    assert infos["v1-5"].config is None


def test_defaults_come_from_the_model(tmp_path: Path, models: Path) -> None:
    write_diffusers(models / "Stable-diffusion" / "f16", sample=16, levels=5)
    (models / "Stable-diffusion" / "f16" / "sdgate.json").write_text('{"steps": 12, "height": 192}')
    catalog = catalog_for(tmp_path, models)
    d = catalog.defaults_for(catalog.resolve("f16"))
    assert (d.name, d.width, d.height, d.steps, d.vae_scale_factor) == ("f16", 256, 192, 12, 16)
    d = catalog.defaults_for(catalog.resolve("v1-5"))
    assert (d.width, d.height, d.steps, d.vae_scale_factor) == (512, 512, 20, 8)


def test_sd2_epsilon_is_512_and_diffusers_v_is_768(tmp_path: Path) -> None:
    root = tmp_path / "m"
    write_header(root / "Stable-diffusion" / "base.safetensors", SD2)
    write_diffusers(root / "Stable-diffusion" / "v", cross=1024, sample=96, prediction="v_prediction")
    infos = {m.name: m for m in catalog_for(tmp_path, root).list()}
    assert (infos["base"].native_width, infos["base"].v_prediction) == (512, False)
    assert (infos["v"].family, infos["v"].native_width, infos["v"].v_prediction) == ("sd2", 768, True)


@pytest.mark.parametrize(
    "alias",
    [
        "v1-5",
        "v1-5.safetensors",
        "v1-5.safetensors [0123456789]",
        "V1-5",
        "sub/Anime Model.safetensors",
        "sub_Anime Model",
        "Anime Model",
        "Anime Model.safetensors",
        "sub\\Anime Model.safetensors",
    ],
)
def test_resolve_aliases(tmp_path: Path, models: Path, alias: str) -> None:
    info = catalog_for(tmp_path, models).resolve(alias)
    expected = "sub_Anime Model" if "Anime" in alias else "v1-5"
    assert info.name == expected


def test_resolve_by_hashes_and_title_once_hashed(tmp_path: Path, models: Path) -> None:
    catalog = catalog_for(tmp_path, models)
    info = catalog.ensure_hash(catalog.resolve("v1-5"))
    sha = compute_sha256(info.filename)
    assert info.sha256 == sha and info.short_hash == sha[:10]
    assert info.title == f"v1-5.safetensors [{sha[:10]}]"
    for alias in (info.title, sha, sha[:10], sha.upper(), "v1-5.safetensors [deadbeef]"):
        assert catalog.resolve(alias).filename == info.filename
    assert catalog.resolve("v1-5").title == info.title  # the catalog now shows the hash


def test_resolve_by_a1111_old_hash(tmp_path: Path) -> None:
    import hashlib

    root = tmp_path / "m"
    path = write_header(root / "Stable-diffusion" / "old.safetensors", SD1, os.urandom(0x120000))
    data = path.read_bytes()
    old = hashlib.sha256(data[0x100000:0x110000]).hexdigest()[:8]
    assert catalog_for(tmp_path, root).resolve(old).name == "old"


def test_hash_cache_survives_a_new_catalog_and_notices_changes(tmp_path: Path, models: Path) -> None:
    first = catalog_for(tmp_path, models)
    sha = first.ensure_hash(first.resolve("v1-5")).sha256
    cache = json.loads((tmp_path / "data" / "cache" / "hashes.json").read_text())
    assert sha in {entry["sha256"] for entry in cache.values()}
    second = catalog_for(tmp_path, models)
    assert second.resolve("v1-5").sha256 == sha  # read from the cache, not recomputed
    path = models / "Stable-diffusion" / "v1-5.safetensors"
    write_header(path, SD1, b"changed!")
    os.utime(path, (1, 1))
    third = catalog_for(tmp_path, models)
    assert third.resolve("v1-5").sha256 is None
    assert third.ensure_hash(third.resolve("v1-5")).sha256 == compute_sha256(path) != sha


def test_unknown_model_raises_model_not_found(tmp_path: Path, models: Path) -> None:
    with pytest.raises(ModelNotFound) as err:
        catalog_for(tmp_path, models).resolve("nope")
    assert err.value.field == "model"


def test_a_file_added_later_is_found_without_refresh(tmp_path: Path, models: Path) -> None:
    catalog = catalog_for(tmp_path, models)
    catalog.list()
    write_header(models / "Stable-diffusion" / "late.safetensors", SD1)
    assert catalog.resolve("late").name == "late"


def test_default_model_precedence(tmp_path: Path, models: Path) -> None:
    builtin = write_diffusers(tmp_path / "builtin" / "sdgate-demo-shapes")
    assert catalog_for(tmp_path, models).default.name == "diff-xl"  # the first found, sorted
    # The user's own models win over the built-in one...
    assert catalog_for(tmp_path, models, builtin).default.name == "diff-xl"
    # ...which is the default only when the models folder is empty.
    demo = catalog_for(tmp_path, tmp_path / "empty", builtin).default
    assert (demo.name, demo.builtin) == ("sdgate-demo-shapes", True)
    extra = write_header(tmp_path / "elsewhere" / "mine.safetensors", SD1)
    assert catalog_for(tmp_path, models, builtin, model=extra).default.name == "mine"
    assert catalog_for(tmp_path, models, builtin, model=extra, default_model="v2").default.name == "v2"
    assert catalog_for(tmp_path, tmp_path / "empty", builtin).resolve(None).name == "sdgate-demo-shapes"


def test_settings_model_can_be_a_diffusers_folder_and_is_not_listed_twice(
    tmp_path: Path, models: Path
) -> None:
    folder = models / "Stable-diffusion" / "diff-xl"
    catalog = catalog_for(tmp_path, models, model=folder)
    assert [m.name for m in catalog.list()].count("diff-xl") == 1
    assert catalog.default.name == "diff-xl"


def test_empty_catalog_has_no_default(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFound):
        catalog_for(tmp_path, tmp_path / "none").resolve(None)


def test_same_file_through_a_symlinked_layout_is_listed_once(tmp_path: Path, models: Path) -> None:
    (models / "checkpoints" / "linked").symlink_to(models / "Stable-diffusion" / "sub")
    names = [m.name for m in catalog_for(tmp_path, models).list()]
    assert names.count("sub_Anime Model") == 1 and "linked_Anime Model" not in names


def test_unreadable_or_empty_checkpoints_are_still_listed(tmp_path: Path) -> None:
    root = tmp_path / "m" / "Stable-diffusion"
    write_header(root / "empty.safetensors", {})
    root.joinpath("broken.ckpt").write_bytes(b"not a zip")
    infos = {m.name: m for m in catalog_for(tmp_path, tmp_path / "m").list()}
    assert infos["empty"].family is None and infos["broken"].family is None
    assert infos["broken"].format == "ckpt"


def test_shapes_from_ckpt_without_running_its_pickle(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    path = tmp_path / "m.ckpt"
    torch.save({"state_dict": {k: torch.zeros(v) for k, v in SD1.items()}, "global_step": 3}, path)
    shapes = read_ckpt_shapes(path)
    assert shapes == SD1
    assert detect_family(shapes) == "sd1"


def test_family_and_vae_factor_detection() -> None:
    assert detect_family(SD1) == "sd1" and detect_family(SD2) == "sd2" and detect_family(SDXL) == "sdxl"
    refiner = {UNET: (384, 4, 3, 3), "conditioner.embedders.0.model.token_embedding.weight": (49408, 1280)}
    assert detect_family(refiner) is None
    assert detect_family({"first_stage_model.encoder.conv_in.weight": (128, 3, 3, 3)}) is None
    assert vae_factor_from_shapes(_vae(4)) == 8 and vae_factor_from_shapes(_vae(3)) == 4
    assert vae_factor_from_shapes(_vae(5)) == 16 and vae_factor_from_shapes(SD1 | {}) == 8
    assert vae_factor_from_shapes({UNET: (1,)}) is None


def test_read_safetensors_shapes(tmp_path: Path) -> None:
    path = write_header(tmp_path / "x.safetensors", {"a": (1, 2), "b": ()})
    assert read_safetensors_shapes(path) == {"a": (1, 2), "b": ()}
    (tmp_path / "bad.safetensors").write_bytes(b"abc")
    with pytest.raises(ValueError):
        read_safetensors_shapes(tmp_path / "bad.safetensors")


def test_list_files_of_other_kinds(tmp_path: Path) -> None:
    root = tmp_path / "models"
    for rel in (
        "Lora/detail.safetensors",
        "Lora/sub/style.pt",
        "loras/comfy.safetensors",
        "Lora/readme.md",
        "VAE/vae-ft.safetensors",
        "vae/sdxl_vae.safetensors",
        "embeddings/bad-hands.pt",
        "ControlNet/canny.pth",
        "ESRGAN/4x.pth",
        "upscale_models/RealESRGAN_x4.pth",
    ):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"x")
    loras = list_files(root, "lora")
    assert sorted(f.name for f in loras) == ["comfy", "detail", "style"]
    assert {f.relpath for f in loras} >= {"sub/style.pt"}
    assert sorted(f.name for f in list_files(root, "vae")) == ["sdxl_vae", "vae-ft"]
    assert [f.name for f in list_files(root, "embeddings")] == ["bad-hands"]
    assert [f.name for f in list_files(root, "controlnet")] == ["canny"]
    assert sorted(f.name for f in list_files(root, "esrgan")) == ["4x", "RealESRGAN_x4"]
    catalog = ModelCatalog(Settings(data_dir=tmp_path / "d", models_dir=root), builtin_dir=None)
    assert [f.kind for f in catalog.list_files("controlnet")] == ["controlnet"]
    with pytest.raises(ValueError):
        list_files(root, "hypernetworks")


def test_models_module_imports_without_torch() -> None:
    code = "import sys, sdgate.core.models; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "False", out.stderr
