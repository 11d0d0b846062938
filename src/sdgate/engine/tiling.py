"""Seamless tiling (A1111's ``tiling``): circular padding on every conv of the UNet and the VAE.

With every ``Conv2d`` padding circularly instead of with zeros, the UNet and the VAE decoder see
the latent as a torus, so the picture's left edge continues its right edge (and top its bottom)
and the image tiles without a seam. A1111 flips ``padding_mode`` the same way.

The switch is per job: ``seamless(pipe, on)`` sets circular padding for the duration of a
``with`` block and puts every conv's own mode back afterwards, so the next job without tiling
runs on exactly the weights and modes it had before. Components shared by the img2img and hires
pipelines are the same modules, so one switch covers them.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Final

import torch

CIRCULAR: Final = "circular"
COMPONENTS = ("unet", "vae")


def _convs(pipe: Any) -> Iterator[torch.nn.Conv2d]:
    for component in COMPONENTS:
        model = getattr(pipe, component, None)
        if isinstance(model, torch.nn.Module):
            for module in model.modules():
                if isinstance(module, torch.nn.Conv2d):
                    yield module


@contextmanager
def seamless(pipe: Any, enabled: bool) -> Iterator[int]:
    """Circular padding on ``pipe``'s UNet and VAE convs inside the block; yields how many."""
    if not enabled:
        yield 0
        return
    saved = [(conv, conv.padding_mode) for conv in _convs(pipe)]
    try:
        for conv, _ in saved:
            conv.padding_mode = CIRCULAR
        yield len(saved)
    finally:
        for conv, mode in saved:
            conv.padding_mode = mode
