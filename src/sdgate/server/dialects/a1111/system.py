"""``/cmd-flags`` and ``/memory``: facts about this process in A1111's shapes."""

from __future__ import annotations

import os
from typing import Any

from sdgate.settings import Settings


def cmd_flags(settings: Settings) -> dict[str, Any]:
    """The A1111 argparse names clients read, with our values (credentials never included)."""
    return {
        "api": True,
        "nowebui": True,
        "listen": settings.host == "0.0.0.0",
        "port": settings.port,
        "server_name": settings.host,
        "data_dir": str(settings.data_dir),
        "models_dir": str(settings.resolved_models_dir),
        "ckpt_dir": str(settings.resolved_models_dir / "Stable-diffusion"),
        "lora_dir": str(settings.resolved_models_dir / "Lora"),
        "vae_dir": str(settings.resolved_models_dir / "VAE"),
        "embeddings_dir": str(settings.resolved_models_dir / "embeddings"),
        "ckpt": str(settings.model) if settings.model else None,
        "device_id": settings.device.partition(":")[2] or None,
        "use_cpu": ["all"] if settings.device == "cpu" else [],
        "no_half": settings.precision == "fp32",
        "api_auth": None,
        "api_server_stop": settings.enable_server_stop,
        "cors_allow_origins": ",".join(settings.cors_allow_origins) or None,
        "lowvram": False,
        "medvram": False,
        "skip_torch_cuda_test": False,
        "sdgate_engine": settings.engine,
        "sdgate_device": settings.device,
    }


def _ram() -> dict[str, int]:
    page = os.sysconf("SC_PAGE_SIZE")
    total = os.sysconf("SC_PHYS_PAGES") * page
    free = os.sysconf("SC_AVPHYS_PAGES") * page
    try:  # MemAvailable counts reclaimable caches, which is what "free" means to a user
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    free = int(line.split()[1]) * 1024
                    break
    except OSError:
        pass
    return {"free": free, "used": total - free, "total": total}


def memory(engine: Any) -> dict[str, Any]:
    cuda: dict[str, Any] = {"error": "unavailable"}
    stats = getattr(engine, "memory_stats", None)
    if callable(stats):
        cuda = stats() or cuda
    return {"ram": _ram(), "cuda": cuda}
