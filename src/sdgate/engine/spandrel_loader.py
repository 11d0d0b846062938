"""spandrel, imported in one place, and image-model files read through it without running them.

spandrel (chaiNNer's loader, used by ComfyUI and A1111) recognises an upscaler or face restorer from
its tensors alone: ESRGAN and Real-ESRGAN (RRDBNet, the Compact SRVGG), SwinIR, HAT, DAT, GFPGAN,
RestoreFormer and many more, each with its own scale and size rules.

Why a stand-in torchvision. spandrel 0.4.2 declares torchvision as a dependency, but torchvision
cannot be installed beside this project's torch (PyPI's wheels are built for one torch each; a
mismatched one fails at import with "operator torchvision::nms does not exist", and pip "fixing"
that replaces torch itself). So spandrel is installed with ``pip install --no-deps spandrel==0.4.2``
plus ``einops``. ``import spandrel`` imports every architecture, and exactly two of them import
torchvision at import time:

- LaMa (inpainting) imports ``rotate`` and ``InterpolationMode`` for a layer it builds only for
  configs spandrel never uses; and we never run an inpainting model (``load_image_model`` refuses
  any purpose but the caller's). The stand-in ``rotate`` raises ``NotImplementedError``.
- RestoreFormer (a face restorer) imports ``normalize`` and calls it on every run: the stand-in is a
  real torch implementation, so RestoreFormer works.

When, and only when, ``import torchvision`` fails, ``import_spandrel`` puts those three names into
``sys.modules`` as ``torchvision.transforms.functional`` (with its two parent packages), imports
spandrel, and takes them out again, restoring whatever was there. Nothing else ever sees a fake
torchvision: transformers and diffusers probe for torchvision to decide which code paths to take,
and a module that is not the real one would send them down paths that then fail.

Reading files: safetensors, or ``torch.load(weights_only=True)`` for ``.pth``/``.pt``/``.ckpt``
(torch's own allow-list unpickler: a pickle that names any other callable is refused before it
runs). spandrel's ``ModelLoader.load_from_file`` is not used for reading because it tries
``torch.jit.load`` first on ``.pt`` files (TorchScript carries code); its ``load_from_state_dict``
does the detection. CodeFormer lives in ``spandrel_extra_arches`` (non-commercial licence); when
that package is installed (``pip install --no-deps spandrel-extra-arches==0.2.0``) its architectures
are added too.
"""

from __future__ import annotations

import importlib
import logging
import sys
import threading
import types
from enum import Enum
from pathlib import Path
from typing import Any

import torch

from sdgate.core.errors import InvalidRequest, ServiceUnavailable

log = logging.getLogger("sdgate.engine")

INSTALL_HINT = "pip install --no-deps spandrel==0.4.2 einops"
_lock = threading.Lock()
_spandrel: types.ModuleType | None = None


class UnsupportedModelFile(InvalidRequest):
    """A file that is not a model spandrel knows, or not of the kind the caller asked for."""


def spandrel_error() -> str | None:
    """Why spandrel cannot be used here, or None when it can (imports it on first call)."""
    try:
        import_spandrel()
    except ServiceUnavailable as exc:
        return exc.message
    return None


def import_spandrel() -> types.ModuleType:
    """The spandrel module (see the module docstring for the torchvision stand-in); a 503 naming
    what is missing when it cannot be imported."""
    global _spandrel
    with _lock:
        if _spandrel is None:
            try:
                _spandrel = _import_with_torchvision_stand_in()
            except ImportError as exc:
                missing = getattr(exc, "name", None) or str(exc)
                raise ServiceUnavailable(
                    f"model-file upscalers and face restorers need spandrel ({missing} is missing): "
                    f"install it with `{INSTALL_HINT}`"
                ) from None
            _add_extra_arches(_spandrel)
        return _spandrel


def _import_with_torchvision_stand_in() -> types.ModuleType:
    if "spandrel" in sys.modules:
        return sys.modules["spandrel"]
    try:
        import torchvision  # noqa: F401

        return importlib.import_module("spandrel")
    except Exception:  # absent, or present but built for another torch
        pass
    before = {k: v for k, v in sys.modules.items() if k == "torchvision" or k.startswith("torchvision.")}
    for key in before:
        del sys.modules[key]
    sys.modules.update(_stand_in_modules())
    try:
        return importlib.import_module("spandrel")
    finally:
        for key in [k for k in sys.modules if k == "torchvision" or k.startswith("torchvision.")]:
            del sys.modules[key]
        sys.modules.update(before)


def _stand_in_modules() -> dict[str, types.ModuleType]:
    root = types.ModuleType("torchvision", "sdgate's import-time stand-in; see sdgate.engine.spandrel_loader")
    transforms = types.ModuleType("torchvision.transforms")
    functional = types.ModuleType("torchvision.transforms.functional")
    functional.InterpolationMode = InterpolationMode  # type: ignore[attr-defined]
    functional.rotate = rotate  # type: ignore[attr-defined]
    functional.normalize = normalize  # type: ignore[attr-defined]
    root.transforms = transforms  # type: ignore[attr-defined]
    transforms.functional = functional  # type: ignore[attr-defined]
    return {
        "torchvision": root,
        "torchvision.transforms": transforms,
        "torchvision.transforms.functional": functional,
    }


class InterpolationMode(Enum):
    NEAREST = "nearest"
    BILINEAR = "bilinear"
    BICUBIC = "bicubic"


def rotate(*args: Any, **kwargs: Any) -> torch.Tensor:
    raise NotImplementedError("torchvision's rotate is not available (LaMa's spatial transform)")


def normalize(
    tensor: torch.Tensor, mean: list[float], std: list[float], inplace: bool = False
) -> torch.Tensor:
    """torchvision's ``normalize`` for a (..., C, H, W) tensor: (x - mean) / std per channel."""
    m = torch.as_tensor(mean, dtype=tensor.dtype, device=tensor.device).view(-1, 1, 1)
    s = torch.as_tensor(std, dtype=tensor.dtype, device=tensor.device).view(-1, 1, 1)
    return tensor.sub_(m).div_(s) if inplace else (tensor - m) / s


def _add_extra_arches(spandrel: types.ModuleType) -> None:
    try:
        import spandrel_extra_arches
    except ImportError:
        return
    try:
        spandrel_extra_arches.install(ignore_duplicates=True)
    except Exception as exc:  # an incompatible version: the main architectures still work
        log.warning("spandrel_extra_arches could not be added: %s", exc)


# --- files ----------------------------------------------------------------------------------------


def read_state_dict(path: Path) -> dict[str, Any]:
    """The tensors of a model file; nothing in the file can run code."""
    if path.suffix.lower() == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path), device="cpu")
    data = torch.load(str(path), map_location="cpu", weights_only=True)
    if not isinstance(data, dict):
        raise ValueError(f"holds a {type(data).__name__}, not a state dict")
    return data


def load_image_model(path: Path, *, purposes: tuple[str, ...], field: str) -> Any:
    """A spandrel ``ImageModelDescriptor`` for ``path`` on the CPU, in eval mode.

    A 503 when spandrel is missing; a 400 naming the file when it cannot be read, spandrel does not
    recognise it, or it is not one of ``purposes`` (spandrel's: "SR", "FaceSR", "Restoration", ...).
    """
    spandrel = import_spandrel()
    try:
        state = read_state_dict(path)
    except Exception as exc:  # unreadable, hostile, not tensors: all the caller's file
        raise UnsupportedModelFile(f"{field}: {path.name} cannot be read: {exc}", field=field) from None
    try:
        model = spandrel.ModelLoader("cpu").load_from_state_dict(state)
    except spandrel.UnsupportedModelError:
        raise UnsupportedModelFile(
            f"{field}: {path.name} is not a model architecture spandrel recognises", field=field
        ) from None
    except Exception as exc:  # recognised, but the tensors do not fit (a truncated or edited file)
        raise UnsupportedModelFile(f"{field}: {path.name} cannot be loaded: {exc}", field=field) from None
    if not isinstance(model, spandrel.ImageModelDescriptor) or model.purpose not in purposes:
        raise UnsupportedModelFile(
            f"{field}: {path.name} is a {model.architecture.name} {model.purpose} model, "
            f"not {' / '.join(purposes)}",
            field=field,
        )
    if model.input_channels != 3 or model.output_channels != 3:
        raise UnsupportedModelFile(f"{field}: {path.name} is not an RGB model", field=field)
    return model.eval()
