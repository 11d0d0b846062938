"""Can the demo VAE's decoder alone learn to draw edges the canny ControlNet bar can see?

The demo ControlNet's score (edge IoU of control and output, ``evaluate_controlnet``) is capped by
the demo VAE: its own round trip of a scene scores 0.43 (RESULTS.md). This experiment fine-tunes the
decoder (and ``post_quant_conv``) with the encoder frozen, so the latent space the demo UNet was
trained on stays as it is, on L1 plus an L1 on the Sobel gradients of the grey image (the quantity
canny thresholds), and prints that round-trip ceiling as it goes. It changes nothing shipped: the
tuned decoder is written to ``--out`` (a ``state_dict``), for a later export if it ever pays off.

    python -m sdgate.demo.sharpen_decoder --minutes 10 --size 128 --out .train/decoder.pt
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from sdgate.demo import dataset as ds
from sdgate.demo import evaluate_controlnet as ec
from sdgate.demo import model as dm

SEED_BASE = 700_000_000  # training scenes: inside the data set's training range, apart from others


def ceiling(vae: Any, n: int = 16, size: int = dm.NATIVE_SIZE) -> float:
    """Mean edge IoU of the VAE's round trip on the ControlNet evaluator's held-out scenes."""
    was_training = vae.training
    vae.eval()
    scores = [ec.edge_iou(edges, ec.vae_round_trip_edges(vae, sample.scene, size))
              for sample, edges in ec.held_out(n, size)]
    vae.train(was_training)
    return sum(scores) / len(scores)


def sobel(x: Any) -> Any:
    """Horizontal and vertical Sobel gradients of the grey image of ``x`` (B,3,H,W in [-1,1])."""
    import torch
    import torch.nn.functional as F

    kx = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]]) / 4
    kernel = torch.stack([kx, kx.t()])[:, None].to(x)
    grey = 0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]
    return F.conv2d(grey, kernel, padding=1)


def run(minutes: float, *, size: int, batch: int, lr: float, gradient_weight: float, every: int,
        out: Path | None, threads: int) -> list[tuple[int, float, float]]:
    """Trains for ``minutes``; returns ``(step, seconds, ceiling)`` at the start and every ``every``
    steps (and at the end)."""
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(threads)
    vae = dm.load_pipeline().vae.float()
    vae.encoder.requires_grad_(False)
    vae.quant_conv.requires_grad_(False)
    params = [p for p in vae.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.99), weight_decay=0.0)
    history = [(0, 0.0, ceiling(vae))]
    started = time.time()
    print(f"step 0: round-trip edge IoU {history[-1][2]:.3f}", flush=True)
    step = 0
    vae.train()
    while time.time() - started < minutes * 60:
        scenes = [ds.make_sample(SEED_BASE + step * batch + i).scene for i in range(batch)]
        x = ds.render(scenes, size) * 2 - 1
        with torch.no_grad():
            z = vae.encode(x).latent_dist.sample()
        rec = vae.decode(z).sample
        loss = F.l1_loss(rec, x) + gradient_weight * F.l1_loss(sobel(rec), sobel(x))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        step += 1
        if step % every == 0:
            history.append((step, time.time() - started, ceiling(vae)))
            print(f"step {step} ({history[-1][1]:.0f} s): loss {loss.item():.4f}, "
                  f"round-trip edge IoU {history[-1][2]:.3f}", flush=True)
    if history[-1][0] != step:
        history.append((step, time.time() - started, ceiling(vae)))
        print(f"step {step}: round-trip edge IoU {history[-1][2]:.3f}", flush=True)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        torch.save(vae.state_dict(), out)
    return history


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--size", type=int, default=128, help="training scenes' size (the ceiling is "
                        "measured at the native 256)")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--gradient-weight", type=float, default=2.0)
    parser.add_argument("--every", type=int, default=100, help="steps between ceiling measurements")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    run(args.minutes, size=args.size, batch=args.batch, lr=args.lr, gradient_weight=args.gradient_weight,
        every=args.every, out=args.out, threads=args.threads)


if __name__ == "__main__":
    main()
