"""Training the demo ControlNet (canny) for the demo model.

A diffusers ``ControlNetModel.from_unet`` copy of the demo UNet's encoder (down blocks and mid
block, weights copied, zero convolutions on every residual), with a conditioning embedding that
downsamples by 16 like the demo VAE (five widths, four stride-2 convolutions), trained with the
demo UNet, VAE and text encoder frozen on scenes of the demo data set rendered at 256 and their
canny edge maps (thresholds 100/200, the same canny the ``canny`` preprocessor runs).

Deterministic and resumable: the scenes of step ``n`` are a pure function of ``(seed, n)`` from
their own slice of the training seed range (``CONTROL_TRAIN_BASE`` up; the evaluator holds out
``CONTROL_EVAL_BASE`` up, inside the data set's evaluation range), noise and timesteps from a
generator seeded by ``(seed, n)``. A checkpoint folder holds ``state.json``,
``controlnet.safetensors`` and ``optim.pt``; a run cut at any point continues where it stopped, and
every checkpoint is also exported (fp16) when an export folder is given, so a cut run is usable.

Loss: epsilon MSE with the min-SNR-5 weighting and 0.1 offset noise the demo UNet was trained
with; timesteps drawn half uniformly and half biased to high noise (``1 - u**3``), where the
layout of the image is decided; 30 % empty captions so the control alone carries the outline.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from sdgate.demo import dataset as ds
from sdgate.demo import model as dm

CONTROLNET_NAME = "sdgate-demo-canny"
CATALOG_NAME = "control_sdgate_demo_canny"
CONTROLNET_DIR = Path(__file__).parent / "weights" / CONTROLNET_NAME
# Four stride-2 steps: a 256x256 edge map becomes the 16x16 latent grid (the VAE downsamples by 16).
EMBEDDING_CHANNELS = (8, 16, 32, 64, 128)
CANNY_LOW, CANNY_HIGH = 100, 200
CONTROL_TRAIN_BASE = 600_000_000  # training scenes, well inside the data set's training range
CONTROL_EVAL_BASE = ds.EVAL_BASE + 5_000_000  # held out (the data set's evaluation range)


@dataclass
class ControlTrainConfig:
    seed: int = 0
    steps: int = 100_000
    minutes: float | None = 25.0
    batch: int = 8
    reuse: int = 2  # steps per rendered+encoded batch (fresh noise and timesteps each time)
    size: int = dm.NATIVE_SIZE
    lr: float = 5e-4
    warmup: int = 50
    cfg_dropout: float = 0.3
    offset_noise: float = 0.1
    min_snr_gamma: float = 5.0
    high_noise_frac: float = 0.5
    threads: int = 2
    checkpoint_every_s: float = 90.0
    log_every: int = 10


SMOKE = ControlTrainConfig(steps=3, minutes=None, batch=2, reuse=1, size=64, log_every=1,
                           checkpoint_every_s=1e9)


# ---------------------------------------------------------------------------------------------
# Edge maps


def canny(rgb: Any, low: int = CANNY_LOW, high: int = CANNY_HIGH) -> Any:
    """Canny edges (uint8 HxW, 0 or 255) of an RGB uint8 image, grey first, as the preprocessor."""
    import cv2

    return cv2.Canny(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY), low, high)


def to_uint8(images: Any) -> Any:
    """(B,3,H,W) float [0,1] tensor -> (B,H,W,3) uint8 array."""
    import torch

    return (images.clamp(0, 1).permute(0, 2, 3, 1) * 255).round().to(torch.uint8).numpy()


def control_tensor(edges: list[Any]) -> Any:
    """Edge maps (uint8 HxW) -> (B,3,H,W) float in [0,1], white edges on black (as the pipeline sees)."""
    import numpy as np
    import torch

    arr = torch.from_numpy(np.stack(edges)).float().div(255.0)
    return arr[:, None].repeat(1, 3, 1, 1)


def scene_edges(scenes: list[ds.Scene], size: int) -> tuple[Any, list[Any]]:
    """Render scenes at ``size``; return the images (B,3,H,W in [0,1]) and their canny edge maps."""
    images = ds.render(scenes, size)
    return images, [canny(a) for a in to_uint8(images)]


# ---------------------------------------------------------------------------------------------
# Model


def build_controlnet(unet: Any) -> Any:
    from diffusers import ControlNetModel

    return ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=EMBEDDING_CHANNELS)


def load_controlnet(folder: Path | None = None) -> Any:
    import torch
    from diffusers import ControlNetModel

    return ControlNetModel.from_pretrained(str(folder or CONTROLNET_DIR), dtype=torch.float32,
                                           local_files_only=True)


def export(controlnet: Any, folder: Path) -> None:
    """Write a diffusers ControlNetModel folder (fp16 safetensors), atomically."""
    import copy
    import shutil

    import torch

    folder = Path(folder)
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    copy.deepcopy(controlnet).to(torch.float16).save_pretrained(tmp, safe_serialization=True)
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)


# ---------------------------------------------------------------------------------------------
# Training


def _batch(cfg: ControlTrainConfig, n: int, tokenizer: Any) -> tuple[Any, Any, Any]:
    import random

    import torch

    base = CONTROL_TRAIN_BASE + (cfg.seed * 1_000_003 + n) * cfg.batch
    if base + cfg.batch > ds.EVAL_BASE:
        raise ValueError("training seeds would reach the held-out evaluation range")
    samples = [ds.make_sample(base + i) for i in range(cfg.batch)]
    images, edges = scene_edges([s.scene for s in samples], cfg.size)
    rng = random.Random(cfg.seed * 7 + n)
    captions = ["" if rng.random() < cfg.cfg_dropout else s.caption for s in samples]
    ids = tokenizer(captions, padding="max_length", max_length=dm.MAX_TOKENS, truncation=True,
                    return_tensors="pt").input_ids.to(torch.long)
    return images, control_tensor(edges), ids


def train(
    ckpt_dir: Path,
    cfg: ControlTrainConfig,
    *,
    export_to: Path | None = None,
    base_model: Path | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run (or continue) training on CPU; returns the final state (and exports if asked)."""
    import torch
    import torch.nn.functional as F
    from diffusers import DDPMScheduler
    from safetensors.torch import load_file, save_file

    torch.set_num_threads(cfg.threads)
    ckpt_dir = Path(ckpt_dir)
    pipe = dm.load_pipeline(base_model)
    vae, unet, te = (m.eval().requires_grad_(False) for m in (pipe.vae, pipe.unet, pipe.text_encoder))
    torch.manual_seed(cfg.seed)
    controlnet = build_controlnet(unet).train()
    state: dict[str, Any] = {"step": 0, "seconds": 0.0, "config": asdict(cfg), "losses": []}
    opt = torch.optim.AdamW(controlnet.parameters(), lr=cfg.lr, weight_decay=0.0, betas=(0.9, 0.99))
    if (ckpt_dir / "state.json").exists():
        state = json.loads((ckpt_dir / "state.json").read_text())
        controlnet.load_state_dict(load_file(str(ckpt_dir / "controlnet.safetensors")))
        if (ckpt_dir / "optim.pt").exists():
            opt.load_state_dict(torch.load(ckpt_dir / "optim.pt"))
        log(f"resumed {ckpt_dir} at step {state['step']}")

    def save() -> None:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in controlnet.state_dict().items()},
                  str(ckpt_dir / "controlnet.safetensors.tmp"))
        torch.save(opt.state_dict(), ckpt_dir / "optim.pt.tmp")
        (ckpt_dir / "state.json.tmp").write_text(json.dumps(state, indent=1) + "\n")
        for name in ("controlnet.safetensors", "optim.pt", "state.json"):
            (ckpt_dir / f"{name}.tmp").replace(ckpt_dir / name)
        if export_to is not None:
            export(controlnet, export_to)

    sched = DDPMScheduler(**{k: v for k, v in dm.SCHEDULER_CONFIG.items() if k in (
        "num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "prediction_type")})
    alphas = sched.alphas_cumprod
    snr = alphas / (1 - alphas)
    n_t = sched.config.num_train_timesteps
    sf = pipe.vae.config.scaling_factor
    params = list(controlnet.parameters())
    step = state["step"]
    t0, t_ckpt = time.time() - state["seconds"], time.time()
    running: float | None = None
    latents = control = ids = None
    while step < cfg.steps and (cfg.minutes is None or time.time() - t0 < cfg.minutes * 60):
        gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
        if latents is None or step % cfg.reuse == 0:
            images, control, ids = _batch(cfg, step // cfg.reuse, pipe.tokenizer)
            with torch.no_grad():
                latents = vae.encode(images * 2 - 1).latent_dist.sample(generator=gen) * sf
                cond = te(ids)[0]
        b = latents.shape[0]
        noise = torch.randn(latents.shape, generator=gen)
        noise = noise + cfg.offset_noise * torch.randn((b, latents.shape[1], 1, 1), generator=gen)
        u = torch.rand(b, generator=gen)
        high = torch.rand(b, generator=gen) < cfg.high_noise_frac
        frac = torch.where(high, 1 - u**3, u)
        t = (frac * n_t).long().clamp(0, n_t - 1)
        noisy = sched.add_noise(latents, noise, t)
        lr = cfg.lr * min(1.0, (step + 1) / max(cfg.warmup, 1))
        for g in opt.param_groups:
            g["lr"] = lr
        down, mid = controlnet(noisy, t, cond, controlnet_cond=control, return_dict=False)
        pred = unet(noisy, t, cond, down_block_additional_residuals=down,
                    mid_block_additional_residual=mid).sample
        weight = snr[t].clamp(max=cfg.min_snr_gamma) / snr[t]
        loss = (F.mse_loss(pred, noise, reduction="none").mean(dim=(1, 2, 3)) * weight).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        step += 1
        value = loss.item()
        running = value if running is None else 0.95 * running + 0.05 * value
        if step % cfg.log_every == 0:
            elapsed = time.time() - t0
            state["losses"].append([step, round(elapsed, 1), round(running, 5)])
            log(f"step {step} loss {running:.4f} lr {lr:.2e} t {elapsed:.0f}s")
        if time.time() - t_ckpt > cfg.checkpoint_every_s:
            state.update(step=step, seconds=time.time() - t0)
            save()
            t_ckpt = time.time()
            log(f"checkpoint at step {step}")
    state.update(step=step, seconds=time.time() - t0)
    if not math.isfinite(running or 0.0):
        raise RuntimeError("training diverged (non-finite loss)")
    save()
    log(f"stopped at step {step} after {state['seconds']:.0f}s")
    return state
