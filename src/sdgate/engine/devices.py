"""Which device and dtypes the engine uses, how much memory it may keep models in, and OOM handling."""

from __future__ import annotations

import gc
import logging
import os
from typing import Any

import torch

log = logging.getLogger("sdgate.engine")

# Loaded models may use this share of the device's memory; the rest is for activations.
CUDA_CACHE_SHARE = 0.6
RAM_CACHE_SHARE = 0.5


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA if available, else MPS, else CPU; ``cuda``/``cuda:N``/``mps``/``cpu`` as given."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", 0)
    return device


def resolve_dtype(device: torch.device, precision: str) -> torch.dtype:
    """fp16 on GPUs by default, fp32 on the CPU (where fp16 is slow and half the ops are missing)."""
    if precision == "fp32":
        return torch.float32
    if precision == "bf16":
        return torch.bfloat16
    if device.type == "cpu":
        if precision == "fp16":
            log.warning("fp16 is not supported on the CPU; using fp32")
        return torch.float32
    return torch.float16


def vae_dtype(device: torch.device, dtype: torch.dtype, family: str | None) -> torch.dtype:
    """SDXL's VAE overflows to NaN in fp16: run it in bf16 where the GPU has it, else fp32."""
    if family != "sdxl" or dtype != torch.float16:
        return dtype
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def _ram_available() -> int:
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))


def default_cache_budget(device: torch.device) -> int:
    """Bytes of weights the model cache may hold when ``model_cache_bytes`` is not set."""
    if device.type == "cuda":
        _free, total = torch.cuda.mem_get_info(device)
        return int(total * CUDA_CACHE_SHARE)
    return int(_ram_available() * RAM_CACHE_SHARE)


def is_oom(exc: BaseException) -> bool:
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def free_memory(device: torch.device) -> None:
    """Give cached blocks back after an OOM or an unload, so the next attempt starts clean."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    elif device.type == "mps":
        torch.mps.empty_cache()


def memory_stats(device: torch.device) -> dict[str, Any] | None:
    """The ``cuda`` part of A1111's ``/memory`` response; None off CUDA."""
    if device.type != "cuda":
        return None
    free, total = torch.cuda.mem_get_info(device)
    s = torch.cuda.memory_stats(device)

    def pair(name: str) -> dict[str, int]:
        return {"current": s.get(f"{name}.all.current", 0), "peak": s.get(f"{name}.all.peak", 0)}

    return {
        "system": {"free": free, "used": total - free, "total": total},
        "active": pair("active_bytes"),
        "allocated": pair("allocated_bytes"),
        "reserved": pair("reserved_bytes"),
        "inactive": pair("inactive_split_bytes"),
        "events": {"retries": s.get("num_alloc_retries", 0), "oom": s.get("num_ooms", 0)},
    }
