"""Training the demo model: the VAE first, then the UNet and the text encoder together.

Seeded and resumable: the data of step ``n`` is a pure function of ``(seed, n)`` (scenes from data
set seeds below ``EVAL_BASE``, noise from a generator seeded by ``(seed, n)``), and a
checkpoint folder holds the phase, the step, the weights, their EMA and the optimiser state, so a
run stopped at any point continues where it stopped. Images are rendered on the training device.

Checkpoint folder layout: ``state.json``; ``{vae,unet,text_encoder}.safetensors`` (live weights);
``ema_{unet,text_encoder}.safetensors``; ``optim.pt``. A *light* checkpoint (``light=True``) keeps
only the EMA weights in fp16 (small enough to carry between machines); resuming from it starts the
live weights from the EMA and the optimiser afresh.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sdgate.demo import dataset as ds
from sdgate.demo import model as dm


@dataclass
class TrainConfig:
    seed: int = 0
    vae_steps: int = 4000
    unet_steps: int = 20000
    vae_minutes: float | None = None  # stop the phase after this long (whichever comes first)
    unet_minutes: float | None = None
    vae_batch: int = 32
    unet_batch: int = 128
    vae_lr: float = 1e-3
    unet_lr: float = 5e-4
    warmup: int = 300
    ema_decay: float = 0.999
    sizes: tuple[int, int] = (256, 512)  # rendered sizes: the larger one every `large_every` steps
    large_every: int = 3
    cfg_dropout: float = 0.1
    offset_noise: float = 0.1
    min_snr_gamma: float = 5.0
    kl_weight: float = 1e-6
    checkpoint_every_s: float = 120.0
    light_checkpoint: bool = False
    workers: int = 0
    log_every: int = 50
    extra: dict[str, Any] = field(default_factory=dict)


SMOKE = TrainConfig(
    vae_steps=12, unet_steps=12, vae_batch=4, unet_batch=4, sizes=(64, 128), warmup=2,
    log_every=4, checkpoint_every_s=1e9,
)


# ---------------------------------------------------------------------------------------------
# Data


class StepBatches:
    """Map-style: item ``n`` is the batch of step ``n`` (captions tokenised, scenes packed)."""

    def __init__(self, seed: int, batch: int, cfg_dropout: float, offset: int) -> None:
        self.seed, self.batch, self.cfg_dropout, self.offset = seed, batch, cfg_dropout, offset
        self._tokenizer: Any = None

    def __len__(self) -> int:
        return 1 << 40

    def __getitem__(self, step: int) -> dict[str, Any]:
        import random

        import torch

        if self._tokenizer is None:
            self._tokenizer = dm.load_tokenizer()
        base = ds.TRAIN_BASE + self.offset + (self.seed * 1_000_003 + step) * self.batch
        if base + self.batch > ds.EVAL_BASE:
            raise ValueError("training seeds would reach the held-out evaluation range")
        samples = [ds.make_sample(base + i) for i in range(self.batch)]
        rng = random.Random(self.seed * 7 + step)
        captions = ["" if rng.random() < self.cfg_dropout else s.caption for s in samples]
        ids = self._tokenizer(
            captions, padding="max_length", max_length=dm.MAX_TOKENS, truncation=True, return_tensors="pt"
        ).input_ids
        packed = ds.scene_tensors([s.scene for s in samples])
        return {"ids": ids.to(torch.long), **packed}


def _batches(cfg: TrainConfig, batch: int, start: int, offset: int) -> Any:
    from torch.utils.data import DataLoader

    data = StepBatches(cfg.seed, batch, cfg.cfg_dropout, offset)
    if cfg.workers <= 0:
        return (data[n] for n in range(start, 1 << 40))
    loader = DataLoader(
        data, batch_size=None, sampler=range(start, 1 << 40), num_workers=cfg.workers,
        prefetch_factor=4, persistent_workers=False,
    )
    return iter(loader)


# ---------------------------------------------------------------------------------------------
# Checkpoints


def save_checkpoint(folder: Path, state: dict[str, Any], parts: dict[str, Any], *, light: bool) -> None:
    import torch
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / "tmp"
    tmp.mkdir(exist_ok=True)

    def dump(name: str, module_or_sd: Any, half: bool = False) -> None:
        sd = module_or_sd if isinstance(module_or_sd, dict) else module_or_sd.state_dict()
        sd = {k: (v.half() if half else v.float()).contiguous().cpu() for k, v in sd.items()}
        save_file(sd, str(tmp / f"{name}.safetensors"))

    dump("vae", parts["vae"], half=light)
    for name in ("unet", "text_encoder"):
        if light:
            dump(name, parts[f"ema_{name}"], half=True)
        else:
            dump(name, parts[name])
            dump(f"ema_{name}", parts[f"ema_{name}"])
    if not light and parts.get("optim") is not None:
        torch.save(parts["optim"].state_dict(), tmp / "optim.pt")
    (tmp / "state.json").write_text(json.dumps(state, indent=2) + "\n")
    for f in folder.glob("*"):
        if f.is_file():
            f.unlink()
    for f in tmp.iterdir():
        f.rename(folder / f.name)
    tmp.rmdir()


def load_checkpoint(folder: Path) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    from safetensors.torch import load_file

    state = json.loads((folder / "state.json").read_text())
    tensors = {f.stem: load_file(str(f)) for f in folder.glob("*.safetensors")}
    tensors = {k: {n: t.float() for n, t in sd.items()} for k, sd in tensors.items()}
    return state, tensors


# ---------------------------------------------------------------------------------------------
# Training


def train(
    ckpt_dir: Path,
    cfg: TrainConfig,
    *,
    device: str = "cpu",
    export_to: Path | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run (or continue) training; returns the final state. Exports a pipeline folder if asked."""
    import torch

    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    comps = dm.build_components(cfg.seed)
    state: dict[str, Any] = {"phase": "vae", "step": 0, "scaling_factor": 1.0, "config": asdict(cfg),
                             "seconds": {"vae": 0.0, "unet": 0.0}, "device": device}
    tensors: dict[str, dict[str, Any]] = {}
    if (ckpt_dir / "state.json").exists():
        state, tensors = load_checkpoint(ckpt_dir)
        for name in ("vae", "unet", "text_encoder"):
            sd = tensors.get(name) or tensors.get(f"ema_{name}")
            if sd is not None:
                comps[name].load_state_dict(sd)
        log(f"resumed {ckpt_dir}: phase {state['phase']} step {state['step']}")
    for m in comps.values():
        m.to(device)
    if state["phase"] == "vae":
        _train_vae(ckpt_dir, cfg, comps, state, tensors, device, log)
        tensors = {}
    if state["phase"] == "unet":
        _train_unet(ckpt_dir, cfg, comps, state, tensors, device, log)
    if export_to is not None:
        export(ckpt_dir, export_to)
        log(f"exported pipeline to {export_to}")
    return state


def _autocast(device: str) -> Any:
    import contextlib

    import torch

    if device.startswith("cuda"):
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _lr_factor(step: int, warmup: int, frac: float | None = None) -> float:
    w = min(1.0, (step + 1) / max(warmup, 1))
    if frac is None:
        return w
    return w * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(frac, 1.0))))


def _phase_done(cfg: TrainConfig, phase: str, step: int, seconds: float) -> bool:
    steps = cfg.vae_steps if phase == "vae" else cfg.unet_steps
    minutes = cfg.vae_minutes if phase == "vae" else cfg.unet_minutes
    return step >= steps or (minutes is not None and seconds >= minutes * 60)


def _progress(cfg: TrainConfig, phase: str, step: int, seconds: float) -> float:
    steps = cfg.vae_steps if phase == "vae" else cfg.unet_steps
    minutes = cfg.vae_minutes if phase == "vae" else cfg.unet_minutes
    frac = step / steps
    if minutes is not None:
        frac = max(frac, seconds / (minutes * 60))
    return frac


def _train_vae(ckpt_dir: Path, cfg: TrainConfig, comps: dict[str, Any], state: dict[str, Any],
               tensors: dict[str, Any], device: str, log: Callable[[str], None]) -> None:
    import torch
    import torch.nn.functional as F

    vae = comps["vae"].train()
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr, weight_decay=0.0, betas=(0.9, 0.99))
    if (ckpt_dir / "optim.pt").exists():
        opt.load_state_dict(torch.load(ckpt_dir / "optim.pt", map_location=device))
    step, t_last_ckpt = state["step"], time.time()
    t0 = time.time() - state["seconds"]["vae"]
    batches = _batches(cfg, cfg.vae_batch, step, offset=0)
    running: float | None = None
    while not _phase_done(cfg, "vae", step, time.time() - t0):
        batch = next(batches)
        size = cfg.sizes[step % 3 == 2]
        n = cfg.vae_batch if size == cfg.sizes[0] else max(1, cfg.vae_batch // 4)
        packed = {k: v[:n].to(device, non_blocking=True) for k, v in batch.items() if k != "ids"}
        x = ds.render_packed(packed, size) * 2 - 1
        for g in opt.param_groups:
            g["lr"] = cfg.vae_lr * _lr_factor(step, cfg.warmup, _progress(cfg, "vae", step, time.time() - t0))
        with _autocast(device):
            post = vae.encode(x).latent_dist
            z = post.sample(generator=None)
            rec = vae.decode(z).sample.float()
        kl = post.kl().mean() / (x.shape[-1] * x.shape[-2])
        loss = F.l1_loss(rec, x) + F.mse_loss(rec, x) + cfg.kl_weight * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        step += 1
        running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
        if step % cfg.log_every == 0:
            log(f"vae step {step} loss {running:.4f} size {size} t {time.time() - t0:.0f}s")
        if time.time() - t_last_ckpt > cfg.checkpoint_every_s:
            state.update(step=step, seconds={**state["seconds"], "vae": time.time() - t0})
            _save(ckpt_dir, cfg, state, comps, None, opt, light=False)
            t_last_ckpt = time.time()
    state["scaling_factor"] = _scaling_factor(vae, cfg, device)
    log(f"vae done at step {step}; scaling factor {state['scaling_factor']:.4f}")
    state.update(phase="unet", step=0, vae_steps_done=step,
                 seconds={**state["seconds"], "vae": time.time() - t0})
    _save(ckpt_dir, cfg, state, comps, None, None, light=cfg.light_checkpoint)


def _scaling_factor(vae: Any, cfg: TrainConfig, device: str) -> float:
    import torch

    vae.eval()
    data = StepBatches(cfg.seed + 1, cfg.vae_batch, 0.0, offset=ds.EVAL_BASE // 2)
    stds = []
    with torch.no_grad(), _autocast(device):
        for n in range(4):
            packed = {k: v.to(device) for k, v in data[n].items() if k != "ids"}
            x = ds.render_packed(packed, cfg.sizes[0]) * 2 - 1
            stds.append(vae.encode(x).latent_dist.sample().float().std().item())
    return 1.0 / (sum(stds) / len(stds))


def _save(ckpt_dir: Path, cfg: TrainConfig, state: dict[str, Any], comps: dict[str, Any],
          ema: dict[str, Any] | None, opt: Any, *, light: bool) -> None:
    parts = {"vae": comps["vae"], "unet": comps["unet"], "text_encoder": comps["text_encoder"], "optim": opt}
    for name in ("unet", "text_encoder"):
        parts[f"ema_{name}"] = ema[name] if ema is not None else comps[name].state_dict()
    save_checkpoint(ckpt_dir, state, parts, light=light)


def _train_unet(ckpt_dir: Path, cfg: TrainConfig, comps: dict[str, Any], state: dict[str, Any],
                tensors: dict[str, Any], device: str, log: Callable[[str], None]) -> None:
    import torch
    import torch.nn.functional as F
    from diffusers import DDPMScheduler

    vae = comps["vae"].eval().requires_grad_(False)
    unet, te = comps["unet"].train(), comps["text_encoder"].train()
    trained = {"unet": unet, "text_encoder": te}
    ema = {}
    for name, module in trained.items():
        sd = tensors.get(f"ema_{name}") or module.state_dict()
        ema[name] = {k: v.detach().to(device, torch.float32).clone() for k, v in sd.items()}
    params = [p for m in trained.values() for p in m.parameters()]
    opt = torch.optim.AdamW(params, lr=cfg.unet_lr, weight_decay=0.01, betas=(0.9, 0.99))
    fresh_opt = not (ckpt_dir / "optim.pt").exists()
    if not fresh_opt:
        opt.load_state_dict(torch.load(ckpt_dir / "optim.pt", map_location=device))
    warm_from = state["step"] if fresh_opt else 0
    sched = DDPMScheduler(**{k: v for k, v in dm.SCHEDULER_CONFIG.items() if k in (
        "num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "prediction_type")})
    alphas = sched.alphas_cumprod.to(device)
    snr = alphas / (1 - alphas)
    sf = state["scaling_factor"]
    step, t_last_ckpt = state["step"], time.time()
    t0 = time.time() - state["seconds"]["unet"]
    batches = _batches(cfg, cfg.unet_batch, step, offset=ds.EVAL_BASE // 4)
    ema_pairs = [(ema[n][k], v) for n, m in trained.items() for k, v in m.state_dict().items()
                 if v.dtype.is_floating_point]
    running: float | None = None
    while not _phase_done(cfg, "unet", step, time.time() - t0):
        batch = next(batches)
        # the larger size with half the batch (it costs four times as much)
        size = cfg.sizes[step % cfg.large_every == cfg.large_every - 1]
        n = cfg.unet_batch if size == cfg.sizes[0] else max(1, cfg.unet_batch // 2)
        gen = torch.Generator(device=device).manual_seed(cfg.seed * 1_000_003 + step)
        ids = batch["ids"][:n].to(device, non_blocking=True)
        packed = {k: v[:n].to(device, non_blocking=True) for k, v in batch.items() if k != "ids"}
        for g in opt.param_groups:
            g["lr"] = cfg.unet_lr * _lr_factor(step - warm_from, cfg.warmup)
        with torch.no_grad(), _autocast(device):
            x = ds.render_packed(packed, size) * 2 - 1
            latents = vae.encode(x).latent_dist.sample(generator=gen).float() * sf
        b = latents.shape[0]
        noise = torch.randn(latents.shape, generator=gen, device=device)
        offset = torch.randn((b, latents.shape[1], 1, 1), generator=gen, device=device)
        noise = noise + cfg.offset_noise * offset
        t = torch.randint(0, sched.config.num_train_timesteps, (b,), generator=gen, device=device)
        noisy = sched.add_noise(latents, noise, t)
        with _autocast(device):
            cond = te(ids)[0]
            pred = unet(noisy, t, cond).sample.float()
        weight = (snr[t].clamp(max=cfg.min_snr_gamma) / snr[t]).float()
        loss = (F.mse_loss(pred, noise, reduction="none").mean(dim=(1, 2, 3)) * weight).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        with torch.no_grad():
            decay = min(cfg.ema_decay, (1 + step) / (10 + step))
            torch._foreach_lerp_([e for e, _ in ema_pairs], [v.float() for _, v in ema_pairs], 1 - decay)
        step += 1
        running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
        if step % cfg.log_every == 0:
            log(f"unet step {step} loss {running:.4f} size {size} t {time.time() - t0:.0f}s")
        if time.time() - t_last_ckpt > cfg.checkpoint_every_s:
            state.update(step=step, seconds={**state["seconds"], "unet": time.time() - t0})
            _save(ckpt_dir, cfg, state, comps, ema, opt, light=cfg.light_checkpoint)
            t_last_ckpt = time.time()
    state.update(step=step, seconds={**state["seconds"], "unet": time.time() - t0})
    log(f"unet phase stopped at step {step} after {state['seconds']['unet']:.0f}s")
    _save(ckpt_dir, cfg, state, comps, ema, opt, light=cfg.light_checkpoint)


def export(ckpt_dir: Path, folder: Path) -> None:
    """Write the pipeline folder (EMA weights, fp16) from a checkpoint."""
    state, tensors = load_checkpoint(ckpt_dir)
    comps = dm.build_components(0)
    for name in ("vae", "unet", "text_encoder"):
        sd = tensors.get(f"ema_{name}") or tensors[name]
        comps[name].load_state_dict(sd)
    comps["vae"].register_to_config(scaling_factor=float(state["scaling_factor"]))
    dm.save_pipeline(comps, folder, fp16=True)
