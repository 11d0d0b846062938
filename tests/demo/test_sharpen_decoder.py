"""The decoder-sharpening experiment (``demo/sharpen_decoder.py``): its edge measure and a short run."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from sdgate.demo import sharpen_decoder as sd


def test_sobel_sees_a_step_and_not_a_flat_image() -> None:
    flat = torch.zeros(1, 3, 8, 8)
    step = flat.clone()
    step[..., 4:] = 1.0  # a vertical edge, white on black
    assert sd.sobel(flat).abs().max() == 0
    gx, gy = sd.sobel(step)[0]
    assert gx[4, 3] > 0 and gx[4, 4] > 0 and gx[4, 1] == 0  # across the edge only
    assert gy[2:6].abs().max() == 0  # nothing vertical inside the picture


@pytest.mark.slow
def test_a_short_run_measures_the_ceiling_and_writes_the_decoder(tmp_path: Path) -> None:
    out = tmp_path / "decoder.pt"
    history = sd.run(0.01, size=64, batch=2, lr=1e-4, gradient_weight=2.0, every=1, out=out, threads=1)
    (step, _, before), *later = history
    assert step == 0 and 0.2 < before < 0.7  # the shipped VAE's ceiling (0.43 in RESULTS.md)
    assert later and all(s > 0 and 0.0 <= iou <= 1.0 for s, _, iou in later)  # it trained and measured
    state = torch.load(out)
    assert any(key.startswith("decoder.") for key in state)
