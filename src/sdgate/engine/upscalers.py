"""Upscalers that need no download: Lanczos, Nearest, and ESRGAN-family RRDBNet checkpoints.

``RRDBNet`` is our own implementation of ESRGAN's network; it loads both key layouts found in the
wild: the original ESRGAN one (``model.0``, ``model.1.sub.N.RDB1.conv1.0``, ...) and the
Real-ESRGAN / BasicSR one (``conv_first``, ``body.N.rdb1.conv1``, ...), including Real-ESRGAN's
x2 and x1 models that pixel-unshuffle their input. Checkpoints are read as tensors only
(safetensors, or torch's weights-only unpickler); nothing in a file can run code.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from sdgate.core.errors import InvalidRequest

BUILTIN = ("None", "Lanczos", "Nearest")
TILE = 192  # pixels of input per tile: bounds memory on large images
TILE_PAD = 16


@dataclass(frozen=True)
class UpscalerInfo:
    name: str
    path: Path | None = None
    scale: int = 4

    def listing(self) -> dict[str, Any]:
        """An A1111 ``/upscalers`` item."""
        return {
            "name": self.name,
            "model_name": None if self.path is None else self.path.stem,
            "model_path": None if self.path is None else str(self.path),
            "model_url": None,
            "scale": self.scale,
        }


# --- the network ----------------------------------------------------------------------------------


class _RDB(nn.Module):
    def __init__(self, feat: int, grow: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(feat, grow, 3, 1, 1)
        self.conv2 = nn.Conv2d(feat + grow, grow, 3, 1, 1)
        self.conv3 = nn.Conv2d(feat + 2 * grow, grow, 3, 1, 1)
        self.conv4 = nn.Conv2d(feat + 3 * grow, grow, 3, 1, 1)
        self.conv5 = nn.Conv2d(feat + 4 * grow, feat, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1 = F.leaky_relu(self.conv1(x), 0.2)
        x2 = F.leaky_relu(self.conv2(torch.cat((x, x1), 1)), 0.2)
        x3 = F.leaky_relu(self.conv3(torch.cat((x, x1, x2), 1)), 0.2)
        x4 = F.leaky_relu(self.conv4(torch.cat((x, x1, x2, x3), 1)), 0.2)
        x5 = self.conv5(torch.cat((x, x1, x2, x3, x4), 1))
        return x5 * 0.2 + x


class _RRDB(nn.Module):
    def __init__(self, feat: int, grow: int) -> None:
        super().__init__()
        self.rdb1, self.rdb2, self.rdb3 = _RDB(feat, grow), _RDB(feat, grow), _RDB(feat, grow)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.rdb3(self.rdb2(self.rdb1(x))) * 0.2 + x


class RRDBNet(nn.Module):
    """ESRGAN's generator (BasicSR naming). ``scale`` 4 upsamples twice; 2 and 1 unshuffle first."""

    def __init__(
        self,
        *,
        in_ch: int = 3,
        out_ch: int = 3,
        feat: int = 64,
        blocks: int = 23,
        grow: int = 32,
        scale: int = 4,
    ) -> None:
        super().__init__()
        self.scale = scale
        self.unshuffle = {4: 1, 2: 2, 1: 4}[scale]
        self.conv_first = nn.Conv2d(in_ch * self.unshuffle**2, feat, 3, 1, 1)
        self.body = nn.Sequential(*(_RRDB(feat, grow) for _ in range(blocks)))
        self.conv_body = nn.Conv2d(feat, feat, 3, 1, 1)
        self.conv_up1 = nn.Conv2d(feat, feat, 3, 1, 1)
        self.conv_up2 = nn.Conv2d(feat, feat, 3, 1, 1)
        self.conv_hr = nn.Conv2d(feat, feat, 3, 1, 1)
        self.conv_last = nn.Conv2d(feat, out_ch, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.unshuffle > 1:
            x = F.pixel_unshuffle(x, self.unshuffle)
        feat = self.conv_first(x)
        feat = feat + self.conv_body(self.body(feat))
        feat = F.leaky_relu(self.conv_up1(F.interpolate(feat, scale_factor=2, mode="nearest")), 0.2)
        feat = F.leaky_relu(self.conv_up2(F.interpolate(feat, scale_factor=2, mode="nearest")), 0.2)
        return self.conv_last(F.leaky_relu(self.conv_hr(feat), 0.2))  # type: ignore[no-any-return]


_OLD_TOP = {
    "model.0": "conv_first",
    "model.3": "conv_up1",
    "model.6": "conv_up2",
    "model.8": "conv_hr",
    "model.10": "conv_last",
}
_OLD_RDB = re.compile(r"model\.1\.sub\.(\d+)\.RDB(\d)\.conv(\d)\.0\.(weight|bias)")
_OLD_TRUNK = re.compile(r"model\.1\.sub\.(\d+)\.(weight|bias)")


def to_basicsr_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Old ESRGAN keys -> BasicSR keys (a BasicSR state dict comes back unchanged)."""
    if "conv_first.weight" in state:
        return state
    if "params_ema" in state or "params" in state:  # Real-ESRGAN's training wrapper
        return to_basicsr_keys(state.get("params_ema") or state["params"])  # type: ignore[arg-type]
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        head, _, tail = key.rpartition(".")
        if head in _OLD_TOP:
            out[f"{_OLD_TOP[head]}.{tail}"] = value
        elif m := _OLD_RDB.fullmatch(key):
            out[f"body.{m[1]}.rdb{m[2]}.conv{m[3]}.{m[4]}"] = value
        elif m := _OLD_TRUNK.fullmatch(key):
            out[f"conv_body.{m[2]}"] = value
        else:
            raise ValueError(f"unexpected key {key!r}: not an ESRGAN RRDBNet checkpoint")
    return out


def build_rrdbnet(state: dict[str, torch.Tensor]) -> RRDBNet:
    """An ``RRDBNet`` shaped after ``state`` (either key layout), with its weights loaded."""
    state = to_basicsr_keys(state)
    try:
        first = state["conv_first.weight"]
        blocks = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("body."))
        grow = state["body.0.rdb1.conv1.weight"].shape[0]
        out_ch = state["conv_last.weight"].shape[0]
    except (KeyError, ValueError) as exc:
        raise ValueError(f"not an ESRGAN RRDBNet checkpoint ({exc})") from None
    feat, in_total = first.shape[0], first.shape[1]
    scale = {3: 4, 12: 2, 48: 1}.get(in_total)
    if scale is None:
        raise ValueError(f"unsupported input channels {in_total} (expected 3, 12 or 48)")
    net = RRDBNet(in_ch=3, out_ch=out_ch, feat=feat, blocks=blocks, grow=grow, scale=scale)
    net.load_state_dict(state, strict=True)
    return net.eval()


def read_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path), device="cpu")
    data = torch.load(str(path), map_location="cpu", weights_only=True)
    if not isinstance(data, dict):
        raise ValueError("not a state dict")
    return data


# --- running --------------------------------------------------------------------------------------


class Upscalers:
    """Names -> upscalers; ESRGAN networks are loaded on first use and kept (one at a time)."""

    def __init__(self, files: list[Any], device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)
        self._files = {f.name: Path(f.path) for f in files}
        self._loaded: tuple[str, RRDBNet] | None = None
        self._lock = threading.Lock()

    def list(self) -> list[UpscalerInfo]:
        infos = [UpscalerInfo(name, None, 4) for name in BUILTIN]
        infos += [UpscalerInfo(name, path, _scale_hint(name)) for name, path in self._files.items()]
        return infos

    def upscale(self, image: Image.Image, name: str, width: int, height: int, *, field: str) -> Image.Image:
        """``image`` at ``width`` x ``height`` through the upscaler ``name`` (A1111's rule: the network
        runs at its own scale, as often as needed, then Lanczos brings it to the exact size)."""
        image = image.convert("RGB")
        if name in ("None", "", None):
            return (
                image
                if image.size == (width, height)
                else image.resize((width, height), Image.Resampling.LANCZOS)
            )
        if name == "Lanczos":
            return image.resize((width, height), Image.Resampling.LANCZOS)
        if name == "Nearest":
            return image.resize((width, height), Image.Resampling.NEAREST)
        path = self._files.get(name)
        if path is None:
            known = ", ".join(i.name for i in self.list())
            raise InvalidRequest(f"{field}: unknown upscaler {name!r} (known: {known})", field=field)
        with self._lock:
            net = self._network(name, path, field)
            current = image
            for _ in range(3):  # at most 3 passes (64x for a 4x model)
                if current.width >= width and current.height >= height:
                    break
                current = run_network(net, current, self.device)
        return current.resize((width, height), Image.Resampling.LANCZOS)

    def _network(self, name: str, path: Path, field: str) -> RRDBNet:
        if self._loaded is not None and self._loaded[0] == name:
            return self._loaded[1]
        try:
            net = build_rrdbnet(read_checkpoint(path)).to(self.device)
        except Exception as exc:  # unreadable, not a tensor file, not RRDBNet: all the caller's 400
            raise InvalidRequest(f"{field}: upscaler {name} cannot be loaded: {exc}", field=field) from None
        self._loaded = (name, net)
        return net


@torch.inference_mode()
def run_network(net: RRDBNet, image: Image.Image, device: torch.device) -> Image.Image:
    """One pass of ``net`` over ``image``, tile by tile (with overlap) to bound memory."""
    x = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)[None].to(device)
    _, _, h, w = x.shape
    s = net.scale
    out = torch.zeros(1, 3, h * s, w * s, device=device)
    for y0 in range(0, h, TILE):
        for x0 in range(0, w, TILE):
            y1, x1 = min(y0 + TILE, h), min(x0 + TILE, w)
            py0, px0 = max(y0 - TILE_PAD, 0), max(x0 - TILE_PAD, 0)
            py1, px1 = min(y1 + TILE_PAD, h), min(x1 + TILE_PAD, w)
            tile = x[:, :, py0:py1, px0:px1]
            ph, pw = (-tile.shape[2]) % net.unshuffle, (-tile.shape[3]) % net.unshuffle
            if ph or pw:
                tile = F.pad(tile, (0, pw, 0, ph), mode="replicate")
            result = net(tile)
            oy, ox = (y0 - py0) * s, (x0 - px0) * s
            out[:, :, y0 * s : y1 * s, x0 * s : x1 * s] = result[
                :, :, oy : oy + (y1 - y0) * s, ox : ox + (x1 - x0) * s
            ]
    array = out[0].clamp(0, 1).mul(255).round().byte().permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(array, "RGB")


def _scale_hint(name: str) -> int:
    m = re.search(r"x(\d)|(\d)x", name.lower())
    return int(m[1] or m[2]) if m else 4
