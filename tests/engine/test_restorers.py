"""Face restorers through spandrel (whole picture, no detector), in the engine's restore_faces and
with hires fix on a spandrel upscaler; the torchvision stand-in that lets spandrel import."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from sdgate.core import restorers
from sdgate.core.errors import InvalidRequest
from sdgate.core.infotext import parse_infotext
from sdgate.core.models import AssetFile, ModelCatalog, list_files
from sdgate.core.requests import HiresSettings
from sdgate.engine import spandrel_loader
from sdgate.engine.diffusers_engine import DiffusersEngine
from sdgate.engine.restorers import FaceRestorers
from sdgate.settings import Settings
from tests.engine import spandrel_models as sm
from tests.engine.conftest import generate, pixels


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory, tiny_models_dir: Path) -> Path:
    root = tmp_path_factory.mktemp("restorers")
    (root / "Stable-diffusion").mkdir()
    os.symlink(
        tiny_models_dir / "Stable-diffusion" / "tiny-sd15.safetensors",
        root / "Stable-diffusion" / "tiny-sd15.safetensors",
    )
    (root / "facerestore_models").mkdir()
    save_file(
        sm.state_dict(sm.tiny_restoreformer()), str(root / "facerestore_models" / "RestoreFormer.safetensors")
    )
    sm.write_upscaler(root, "Compact", name="4x-compact")
    return root


def test_restorer_names_by_file_then_folder(tmp_path: Path) -> None:
    def asset(folder: str, name: str) -> AssetFile:
        return AssetFile("face_restorers", name, f"{name}.pth", tmp_path / folder / f"{name}.pth")

    files = [
        asset("GFPGAN", "GFPGANv1.4"),
        asset("Codeformer", "weights"),
        asset("facerestore_models", "restoreformer"),
        asset("facerestore_models", "codeformer-v0.1.0"),
    ]
    assert [restorers.restorer_name(f) for f in files] == [
        "GFPGAN",
        "CodeFormer",
        "RestoreFormer",
        "CodeFormer",
    ]
    assert list(restorers.available(files)) == ["CodeFormer", "GFPGAN", "RestoreFormer"]
    assert restorers.choose(files, None, field="restore_faces") == "CodeFormer"  # A1111's default
    assert restorers.choose(files, "gfpgan", field="restore_faces") == "GFPGAN"
    with pytest.raises(InvalidRequest, match="no face restorer is installed"):
        restorers.choose([], None, field="restore_faces")
    with pytest.raises(InvalidRequest, match="'CodeFormer' is not installed"):
        restorers.choose(files[:1], "CodeFormer", field="restore_faces")


def test_whole_picture_restore_keeps_size_and_blends(models_dir: Path) -> None:
    found = FaceRestorers(list_files(models_dir, "face_restorers"))
    image = Image.effect_noise((48, 40), 50).convert("RGB")
    full = found.restore(image, "RestoreFormer", field="restore_faces")
    assert full.size == image.size
    assert found.restore(image, "RestoreFormer", visibility=0, field="f") == image
    half = np.asarray(found.restore(image, "RestoreFormer", visibility=0.5, field="f"), dtype=int)
    want = (np.asarray(image, dtype=int) + np.asarray(full, dtype=int)) / 2
    assert np.abs(half - want).max() <= 1
    with pytest.raises(InvalidRequest, match="'GFPGAN' is not installed"):
        found.restore(image, "GFPGAN", field="gfpgan_visibility")


@pytest.fixture(scope="module")
def engine(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> DiffusersEngine:
    settings = Settings(data_dir=tmp_path_factory.mktemp("data"), models_dir=models_dir, device="cpu")
    return DiffusersEngine(settings, ModelCatalog(settings, builtin_dir=None))


def test_restore_faces_in_a_generation(engine: DiffusersEngine) -> None:
    plain = generate(engine)
    restored = generate(engine, restore_faces="RestoreFormer")
    assert restored.images[0].image.size == (64, 64)
    assert not np.array_equal(pixels(plain)[0], pixels(restored)[0])
    assert parse_infotext(restored.images[0].infotext)["Face restoration"] == "RestoreFormer"
    assert "Face restoration" not in parse_infotext(plain.images[0].infotext)


def test_hires_fix_with_a_spandrel_upscaler(engine: DiffusersEngine) -> None:
    out = generate(engine, hires=HiresSettings(scale=2, upscaler="4x-compact", second_pass_steps=2))
    assert out.images[0].image.size == (128, 128)
    assert parse_infotext(out.images[0].infotext)["Hires upscaler"] == "4x-compact"


def test_the_torchvision_stand_in_is_gone_after_import() -> None:
    """A fresh interpreter: spandrel imports, and nobody else can see a torchvision afterwards."""
    code = (
        "import importlib.util, sys\n"
        "from sdgate.engine.spandrel_loader import import_spandrel\n"
        "real = importlib.util.find_spec('torchvision') is not None\n"
        "import_spandrel()\n"
        "assert 'spandrel' in sys.modules\n"
        "assert real or not any(k.startswith('torchvision') for k in sys.modules), sys.modules.keys()\n"
        "assert real or importlib.util.find_spec('torchvision') is None\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=300)


def test_normalize_stand_in_matches_torchvision_formula() -> None:
    x = torch.rand(1, 3, 4, 4)
    got = spandrel_loader.normalize(x, [0.5, 0.5, 0.5], [0.5, 0.5, 0.5])
    assert torch.allclose(got, x * 2 - 1)
    with pytest.raises(NotImplementedError):
        spandrel_loader.rotate(x, 10.0)


@pytest.fixture(scope="module")
def gfpgan_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("gfpgan")
    (root / "GFPGAN").mkdir()
    state = {k: v.half() for k, v in sm.state_dict(sm.full_gfpgan()).items()}  # half: 170 MB, not 340
    save_file(state, str(root / "GFPGAN" / "GFPGANv1.4.safetensors"))
    return root


@pytest.mark.slow
def test_gfpgan_is_detected_and_restores(gfpgan_dir: Path) -> None:
    path = gfpgan_dir / "GFPGAN" / "GFPGANv1.4.safetensors"
    model = spandrel_loader.load_image_model(path, purposes=("FaceSR",), field="f")
    assert (model.architecture.id, model.scale) == ("GFPGAN", 1)
    found = FaceRestorers(list_files(gfpgan_dir, "face_restorers"))
    image = Image.effect_noise((40, 32), 50).convert("RGB")
    out = found.restore(image, "GFPGAN", visibility=0.7, field="gfpgan_visibility")
    assert out.size == image.size and out != image
