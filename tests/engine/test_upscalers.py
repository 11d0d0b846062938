"""Upscalers through spandrel: tiny random models of each family, detection, scale, output sizes,
tiling, safe loading and the errors a caller sees."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from sdgate.core.errors import InvalidRequest, ServiceUnavailable
from sdgate.core.models import list_files
from sdgate.engine import spandrel_loader
from sdgate.engine import upscalers as up
from sdgate.engine.upscalers import Upscalers
from tests.engine import spandrel_models as sm


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("upscalers")
    for arch in sm.ARCHITECTURES:
        sm.write_upscaler(root, arch)
    sm.write_upscaler(root, "RealESRGAN_x2", name="RealESRGAN_x2plus-pth", pth=True)
    (root / "ESRGAN" / "broken.pth").write_bytes(b"not a checkpoint")
    save_file({"some.weight": torch.zeros(2, 2)}, str(root / "ESRGAN" / "unknown.safetensors"))
    return root


@pytest.mark.parametrize("arch", sm.ARCHITECTURES)
def test_detects_each_family_and_its_scale(models_dir: Path, arch: str) -> None:
    path = next(f.path for f in list_files(models_dir, "esrgan") if f.name == arch)
    model = spandrel_loader.load_image_model(path, purposes=("SR",), field="upscaler_1")
    net, scale = sm.build(arch)
    assert model.architecture.id == ("ESRGAN" if arch.startswith("RealESRGAN") else arch)
    assert model.scale == scale
    x = torch.rand(1, 3, 20, 24)
    with torch.inference_mode():
        assert torch.allclose(model(x), net(x).clamp(0, 1), atol=1e-5)  # the same weights, loaded


@pytest.mark.parametrize("arch", sm.ARCHITECTURES)
def test_one_pass_gives_input_times_scale(models_dir: Path, arch: str) -> None:
    ups = Upscalers(list_files(models_dir, "esrgan"))
    image = Image.effect_noise((24, 20), 40).convert("RGB")
    _, scale = sm.build(arch)
    out = ups.upscale(image, arch, 24 * scale, 20 * scale, field="upscaler_1")
    assert out.size == (24 * scale, 20 * scale)
    listed = {u.name: u.scale for u in ups.list()}
    assert listed[arch] == scale  # the real scale once loaded, not the name's hint


@pytest.mark.parametrize(
    ("name", "size"),
    [
        ("Lanczos", (50, 30)),
        ("Nearest", (50, 30)),
        ("None", (50, 30)),
        ("ESRGAN", (50, 30)),
        ("Compact", (100, 60)),  # one 4x pass
        ("RealESRGAN_x2plus-pth", (44, 28)),  # a .pth with Real-ESRGAN's params_ema wrapper
        ("SwinIR", (90, 50)),  # two 2x passes, then Lanczos
        ("ESRGAN", (20, 12)),
    ],
)
def test_output_sizes(models_dir: Path, name: str, size: tuple[int, int]) -> None:
    ups = Upscalers(list_files(models_dir, "esrgan"))
    image = Image.effect_noise((25, 15), 40).convert("RGB")
    assert ups.upscale(image, name, *size, field="upscaler_1").size == size


def test_listing_and_errors(models_dir: Path) -> None:
    ups = Upscalers(list_files(models_dir, "esrgan"))
    infos = ups.list()
    assert [u.name for u in infos][:3] == ["None", "Lanczos", "Nearest"]
    assert {*sm.ARCHITECTURES, "broken", "unknown"} <= {u.name for u in infos}
    item = next(u for u in infos if u.name == "SwinIR").listing()
    assert set(item) == {"name", "model_name", "model_path", "model_url", "scale"}
    image = Image.new("RGB", (8, 8))
    with pytest.raises(InvalidRequest) as err:
        ups.upscale(image, "missing", 16, 16, field="upscaler_1")
    assert err.value.field == "upscaler_1"
    with pytest.raises(InvalidRequest) as err:
        ups.upscale(image, "broken", 16, 16, field="upscaler_2")
    assert err.value.field == "upscaler_2" and "broken.pth cannot be read" in err.value.message
    with pytest.raises(InvalidRequest) as err:
        ups.upscale(image, "unknown", 16, 16, field="upscaler_1")
    assert "unknown.safetensors is not a model architecture spandrel recognises" in err.value.message


def test_a_face_restorer_is_not_an_upscaler(tmp_path: Path) -> None:
    (tmp_path / "ESRGAN").mkdir()
    save_file(sm.state_dict(sm.tiny_restoreformer()), str(tmp_path / "ESRGAN" / "face.safetensors"))
    ups = Upscalers(list_files(tmp_path, "esrgan"))
    with pytest.raises(InvalidRequest, match="RestoreFormer FaceSR model, not SR"):
        ups.upscale(Image.new("RGB", (8, 8)), "face", 16, 16, field="hr_upscaler")


class _Hostile:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (Path.touch, (str(self.marker),))  # type: ignore[return-value]


@pytest.mark.parametrize("writer", ["torch.save", "raw pickle"])
def test_a_hostile_pickle_runs_nothing(tmp_path: Path, writer: str) -> None:
    marker = tmp_path / "pwned"
    (tmp_path / "ESRGAN").mkdir()
    path = tmp_path / "ESRGAN" / "evil.pth"
    payload = {"conv_first.weight": torch.zeros(1), "x": _Hostile(marker)}
    if writer == "torch.save":
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload))
    ups = Upscalers(list_files(tmp_path, "esrgan"))
    with pytest.raises(InvalidRequest, match="evil.pth cannot be read"):
        ups.upscale(Image.new("RGB", (8, 8)), "evil", 16, 16, field="upscaler_1")
    assert not marker.exists()


def test_tiles_match_a_whole_pass(models_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = models_dir / "ESRGAN" / "ESRGAN.safetensors"
    model = spandrel_loader.load_image_model(path, purposes=("SR",), field="f")
    image = Image.effect_noise((40, 24), 40).convert("RGB")
    whole = up.run_model(model, image, torch.device("cpu"))
    monkeypatch.setattr(up, "TILE", 16)
    tiled = up.run_model(model, image, torch.device("cpu"))
    assert whole.size == tiled.size == (160, 96)
    assert np.abs(np.asarray(whole, dtype=int) - np.asarray(tiled, dtype=int)).max() <= 2


def test_without_spandrel_listing_works_and_use_is_a_503(
    models_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def missing() -> None:
        raise ImportError("No module named 'spandrel'", name="spandrel")

    monkeypatch.setattr(spandrel_loader, "_spandrel", None)
    monkeypatch.setattr(spandrel_loader, "_import_with_torchvision_stand_in", missing)
    ups = Upscalers(list_files(models_dir, "esrgan"))
    assert "ESRGAN" in [u.name for u in ups.list()]
    assert ups.upscale(Image.new("RGB", (8, 8)), "Lanczos", 16, 16, field="upscaler_1").size == (16, 16)
    with pytest.raises(ServiceUnavailable) as err:
        ups.upscale(Image.new("RGB", (8, 8)), "ESRGAN", 16, 16, field="upscaler_1")
    assert "spandrel" in err.value.message and spandrel_loader.INSTALL_HINT in err.value.message
