"""Small-GPU policies (A1111's ``--medvram`` / ``--lowvram``), chosen from free memory unless set.

=========  ==========================================================================
off        everything on the GPU
medvram    model CPU offload (one component on the GPU at a time), sliced attention,
           sliced + tiled VAE
lowvram    sequential CPU offload (layer by layer: slowest, least memory) + the same slicing
=========  ==========================================================================

Only CUDA gets offloading; elsewhere the plan is always "off".
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

from sdgate.core.engine import MemoryBudget

log = logging.getLogger("sdgate.engine")

GIB = 2**30
HEADROOM = 3 * GIB  # activations of a 1024x1024 SDXL step, roughly


@dataclass(frozen=True)
class MemoryPlan:
    mode: str  # off | medvram | lowvram
    reason: str

    @property
    def model_offload(self) -> bool:
        return self.mode == "medvram"

    @property
    def sequential_offload(self) -> bool:
        return self.mode == "lowvram"


def choose(setting: str, *, device_type: str, free_bytes: int | None, model_bytes: int) -> MemoryPlan:
    """The plan for a model of ``model_bytes`` given the setting and the device's free memory."""
    if device_type != "cuda":
        return MemoryPlan("off", f"{device_type} has no offloading")
    if setting in ("off", "medvram", "lowvram"):
        return MemoryPlan(setting, "set by vram_mode")
    if free_bytes is None:
        return MemoryPlan("off", "free memory unknown")
    if free_bytes >= model_bytes + HEADROOM:
        return MemoryPlan("off", f"{free_bytes / GIB:.1f} GiB free")
    if free_bytes >= model_bytes // 2 + HEADROOM // 2:
        return MemoryPlan(
            "medvram", f"only {free_bytes / GIB:.1f} GiB free for a {model_bytes / GIB:.1f} GiB model"
        )
    return MemoryPlan(
        "lowvram", f"only {free_bytes / GIB:.1f} GiB free for a {model_bytes / GIB:.1f} GiB model"
    )


def apply(pipe: Any, plan: MemoryPlan, device: Any) -> None:
    """Install the plan's offloading and slicing on a loaded pipeline (call once, after loading)."""
    if plan.mode == "off":
        return
    log.info("memory plan %s (%s)", plan.mode, plan.reason)
    if plan.sequential_offload:
        pipe.enable_sequential_cpu_offload(device=device)
    elif plan.model_offload:
        pipe.enable_model_cpu_offload(device=device)
    pipe.enable_attention_slicing()
    vae = getattr(pipe, "vae", None)
    if vae is not None:
        vae.enable_slicing()
        vae.enable_tiling()


def job_budget(device: Any, dtype: Any) -> MemoryBudget | None:
    """What one job may use on ``device``: all of a GPU's memory, or all of the machine's for the
    CPU and MPS (unified memory); None when the total cannot be read. The weights count against it
    (``core.limits.estimate_job_memory`` adds them), so this is the whole, not what is left."""
    value_bytes = int(getattr(dtype, "itemsize", 2))
    if device.type == "cuda":
        try:
            import torch

            _free, total = torch.cuda.mem_get_info(device)
        except Exception:  # a driver that cannot say
            return None
        return MemoryBudget(int(total), value_bytes, where=str(device))
    total = ram_total_bytes()
    return MemoryBudget(total, value_bytes, where=f"the {device.type.upper()}'s memory") if total else None


def ram_total_bytes() -> int | None:
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (OSError, ValueError, AttributeError):
        return None


def free_cuda_bytes(device: Any) -> int | None:
    try:
        import torch

        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    except Exception:  # no CUDA, or a driver that cannot say
        return None


def oom_advice(setting: str, *, batch_size: int, width: int, height: int) -> str:
    """What to lower, most effective first, for an out-of-memory error."""
    lower = ["batch_size"] if batch_size > 1 else []
    lower.append("width/height")
    advice = f"lower {' or '.join(lower)} (asked {batch_size} x {width}x{height})"
    if setting in ("auto", "off"):
        advice += "; or start the server with --medvram or --lowvram"
    elif setting == "medvram":
        advice += "; or start the server with --lowvram"
    return advice
