"""Tiny random-weight models of the architectures spandrel recognises, written as model files.

Each is built from spandrel's own architecture classes at a small size, so detection, scale and
running take the same path as a real download of the same family.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from sdgate.engine.spandrel_loader import import_spandrel


def _builders() -> dict[str, tuple[Callable[[], Any], int]]:
    """name -> (a tiny network, its scale)."""
    import_spandrel()
    from spandrel.architectures.Compact import Compact
    from spandrel.architectures.DAT import DAT
    from spandrel.architectures.ESRGAN import ESRGAN
    from spandrel.architectures.HAT import HAT
    from spandrel.architectures.SwinIR import SwinIR

    return {
        "ESRGAN": (lambda: ESRGAN(num_filters=8, num_blocks=1, scale=4), 4),
        # Real-ESRGAN x2plus: pixel-unshuffles by 2, then two 2x upsamplings
        "RealESRGAN_x2": (
            lambda: ESRGAN(in_nc=12, num_filters=8, num_blocks=1, scale=4, shuffle_factor=2), 2
        ),
        "Compact": (lambda: Compact(num_feat=8, num_conv=2, upscale=4), 4),
        "SwinIR": (
            lambda: SwinIR(
                img_size=16, embed_dim=12, depths=[1], num_heads=[2], window_size=4, mlp_ratio=2.0,
                upscale=2, upsampler="pixelshuffle",
            ),
            2,
        ),
        "HAT": (
            lambda: HAT(
                img_size=16, embed_dim=24, depths=(1,), num_heads=(2,), window_size=4, mlp_ratio=2.0,
                upscale=2, num_feat=8, compress_ratio=3, squeeze_factor=4,
            ),
            2,
        ),
        "DAT": (
            lambda: DAT(
                img_size=16, embed_dim=32, depth=[1], num_heads=[2], split_size=[2, 4],
                expansion_factor=2.0, upscale=2,
            ),
            2,
        ),
    }  # fmt: skip


ARCHITECTURES = ("ESRGAN", "RealESRGAN_x2", "Compact", "SwinIR", "HAT", "DAT")
# Where A1111 / ComfyUI keep each family (any upscaler folder takes any family).
FOLDERS = {
    "ESRGAN": "ESRGAN",
    "RealESRGAN_x2": "RealESRGAN",
    "Compact": "upscale_models",
    "SwinIR": "SwinIR",
    "HAT": "HAT",
    "DAT": "DAT",
}


def state_dict(net: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone().contiguous() for k, v in net.state_dict().items()}


def build(arch: str, seed: int = 0) -> tuple[torch.nn.Module, int]:
    torch.manual_seed(seed)
    make, scale = _builders()[arch]
    return make().eval(), scale


def write_upscaler(models_dir: Path, arch: str, *, name: str | None = None, pth: bool = False) -> Path:
    """A tiny ``arch`` upscaler in its usual folder, as .safetensors (or a weights-only .pth)."""
    net, _ = build(arch)
    folder = models_dir / FOLDERS[arch]
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name or arch}.{'pth' if pth else 'safetensors'}"
    if pth:
        torch.save({"params_ema": state_dict(net)}, path)  # Real-ESRGAN's training wrapper
    else:
        save_file(state_dict(net), str(path))
    return path


def tiny_restoreformer() -> torch.nn.Module:
    """RestoreFormer (a face restorer spandrel's main registry knows) at a size that runs a 512x512
    face in about a second: the fast stand-in for GFPGAN, whose sizes spandrel fixes."""
    import_spandrel()
    from spandrel.architectures.RestoreFormer import RestoreFormer

    torch.manual_seed(0)
    return RestoreFormer(
        n_embed=16, embed_dim=32, ch=32, ch_mult=(1, 1, 1, 1, 1, 1), num_res_blocks=1,
        attn_resolutions=(16,), resolution=512, z_channels=32, head_size=2,
    ).eval()  # fmt: skip


def full_gfpgan() -> torch.nn.Module:
    """GFPGAN v1.4's network (spandrel fixes its sizes: 86M parameters)."""
    import_spandrel()
    from spandrel.architectures.GFPGAN import GFPGAN

    torch.manual_seed(0)
    return GFPGAN().eval()
