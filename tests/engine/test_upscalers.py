"""ESRGAN-family upscalers from tiny random RRDBNet checkpoints in both key layouts; output sizes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from sdgate.core.errors import InvalidRequest
from sdgate.core.models import list_files
from sdgate.engine.upscalers import RRDBNet, Upscalers, build_rrdbnet, to_basicsr_keys


def tiny_rrdbnet(scale: int = 4, seed: int = 0) -> RRDBNet:
    torch.manual_seed(seed)
    return RRDBNet(feat=8, blocks=2, grow=4, scale=scale).eval()


def to_old_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """BasicSR keys -> the original ESRGAN layout (what old ``.pth`` files hold)."""
    top = {
        "conv_first": "model.0",
        "conv_up1": "model.3",
        "conv_up2": "model.6",
        "conv_hr": "model.8",
        "conv_last": "model.10",
    }
    blocks = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("body."))
    out = {}
    for key, value in state.items():
        parts = key.split(".")
        if parts[0] in top:
            out[f"{top[parts[0]]}.{parts[1]}"] = value
        elif parts[0] == "conv_body":
            out[f"model.1.sub.{blocks}.{parts[1]}"] = value
        else:
            _, i, rdb, conv, tail = parts
            out[f"model.1.sub.{i}.RDB{rdb[-1]}.{conv}.0.{tail}"] = value
    return out


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("upscalers")
    (root / "ESRGAN").mkdir()
    (root / "RealESRGAN").mkdir()
    (root / "upscale_models").mkdir()
    net = tiny_rrdbnet(4)
    torch.save(to_old_keys(net.state_dict()), root / "ESRGAN" / "old-4x.pth")
    save_file(net.state_dict(), str(root / "upscale_models" / "new-4x.safetensors"))
    torch.save(
        {"params_ema": tiny_rrdbnet(2, seed=1).state_dict()}, root / "RealESRGAN" / "RealESRGAN_x2plus.pth"
    )
    (root / "ESRGAN" / "broken.pth").write_bytes(b"not a checkpoint")
    return root


def test_both_key_layouts_give_the_same_network() -> None:
    net = tiny_rrdbnet(4)
    x = torch.rand(1, 3, 12, 10)
    with torch.no_grad():
        want = net(x)
        got_old = build_rrdbnet(to_old_keys(net.state_dict()))(x)
        got_new = build_rrdbnet(net.state_dict())(x)
    assert want.shape == (1, 3, 48, 40)
    assert torch.allclose(want, got_old) and torch.allclose(want, got_new)
    assert to_basicsr_keys(to_old_keys(net.state_dict())).keys() == net.state_dict().keys()


@pytest.mark.parametrize(
    ("name", "size"),
    [
        ("Lanczos", (50, 30)),
        ("Nearest", (50, 30)),
        ("None", (50, 30)),
        ("old-4x", (50, 30)),
        ("new-4x", (100, 60)),
        ("RealESRGAN_x2plus", (44, 28)),
        ("new-4x", (20, 12)),
    ],
)
def test_output_sizes(models_dir: Path, name: str, size: tuple[int, int]) -> None:
    ups = Upscalers(list_files(models_dir, "esrgan"))
    image = Image.effect_noise((25, 15), 40).convert("RGB")
    assert ups.upscale(image, name, *size, field="upscaler_1").size == size


def test_listing_and_errors(models_dir: Path) -> None:
    ups = Upscalers(list_files(models_dir, "esrgan"))
    names = [u.name for u in ups.list()]
    assert names[:3] == ["None", "Lanczos", "Nearest"]
    assert {"old-4x", "new-4x", "RealESRGAN_x2plus", "broken"} <= set(names)
    image = Image.new("RGB", (8, 8))
    with pytest.raises(InvalidRequest) as err:
        ups.upscale(image, "missing", 16, 16, field="upscaler_1")
    assert err.value.field == "upscaler_1"
    with pytest.raises(InvalidRequest) as err:
        ups.upscale(image, "broken", 16, 16, field="upscaler_2")
    assert err.value.field == "upscaler_2" and "cannot be loaded" in err.value.message


def test_tiles_match_a_whole_pass() -> None:
    from sdgate.engine import upscalers as up

    net = tiny_rrdbnet(4)
    image = Image.effect_noise((40, 24), 40).convert("RGB")
    whole = up.run_network(net, image, torch.device("cpu"))
    before = up.TILE
    try:
        up.TILE = 16
        tiled = up.run_network(net, image, torch.device("cpu"))
    finally:
        up.TILE = before
    assert whole.size == tiled.size == (160, 96)
    import numpy as np

    assert np.abs(np.asarray(whole, dtype=int) - np.asarray(tiled, dtype=int)).max() <= 2
