"""``/cmd-flags`` and ``/memory``: facts about this process in A1111's shapes."""

from __future__ import annotations

import os
from typing import Any

from sdgate.settings import Settings

# Every argparse dest of A1111 1.10.1 (``modules/cmd_args.py`` and the built-in extensions'
# ``preload.py``), with A1111's defaults; ``cmd_flags`` fills in what this server really has.
A1111_FLAGS: dict[str, Any] = {
    "f": False,
    "update_all_extensions": False,
    "skip_python_version_check": False,
    "skip_torch_cuda_test": False,
    "reinstall_xformers": False,
    "reinstall_torch": False,
    "update_check": False,
    "test_server": False,
    "log_startup": False,
    "skip_prepare_environment": False,
    "skip_install": False,
    "dump_sysinfo": False,
    "loglevel": None,
    "do_not_download_clip": False,
    "data_dir": None,  # a path: filled in by cmd_flags
    "models_dir": None,
    "config": None,  # a path: filled in by cmd_flags
    "ckpt": None,  # a path: filled in by cmd_flags
    "ckpt_dir": None,
    "vae_dir": None,
    "gfpgan_dir": "./GFPGAN",
    "gfpgan_model": None,
    "no_half": False,
    "no_half_vae": False,
    "no_progressbar_hiding": False,
    "max_batch_count": 16,
    "embeddings_dir": None,  # a path: filled in by cmd_flags
    "textual_inversion_templates_dir": None,  # a path: filled in by cmd_flags
    "hypernetwork_dir": None,  # a path: filled in by cmd_flags
    "localizations_dir": None,  # a path: filled in by cmd_flags
    "allow_code": False,
    "medvram": False,
    "medvram_sdxl": False,
    "lowvram": False,
    "lowram": False,
    "always_batch_cond_uncond": False,
    "unload_gfpgan": False,
    "precision": "autocast",
    "upcast_sampling": False,
    "share": False,
    "ngrok": None,
    "ngrok_region": "",
    "ngrok_options": {},
    "enable_insecure_extension_access": False,
    "codeformer_models_path": None,  # a path: filled in by cmd_flags
    "gfpgan_models_path": None,  # a path: filled in by cmd_flags
    "esrgan_models_path": None,  # a path: filled in by cmd_flags
    "bsrgan_models_path": None,  # a path: filled in by cmd_flags
    "realesrgan_models_path": None,  # a path: filled in by cmd_flags
    "dat_models_path": None,  # a path: filled in by cmd_flags
    "clip_models_path": None,
    "xformers": False,
    "force_enable_xformers": False,
    "xformers_flash_attention": False,
    "deepdanbooru": False,
    "opt_split_attention": False,
    "opt_sub_quad_attention": False,
    "sub_quad_q_chunk_size": 1024,
    "sub_quad_kv_chunk_size": None,
    "sub_quad_chunk_threshold": None,
    "opt_split_attention_invokeai": False,
    "opt_split_attention_v1": False,
    "opt_sdp_attention": False,
    "opt_sdp_no_mem_attention": False,
    "disable_opt_split_attention": False,
    "disable_nan_check": False,
    "use_cpu": [],
    "use_ipex": False,
    "disable_model_loading_ram_optimization": False,
    "listen": False,
    "port": None,
    "show_negative_prompt": False,
    "ui_config_file": None,  # a path: filled in by cmd_flags
    "hide_ui_dir_config": False,
    "freeze_settings": False,
    "freeze_settings_in_sections": None,
    "freeze_specific_settings": None,
    "ui_settings_file": None,  # a path: filled in by cmd_flags
    "gradio_debug": False,
    "gradio_auth": None,
    "gradio_auth_path": None,
    "gradio_img2img_tool": None,
    "gradio_inpaint_tool": None,
    "gradio_allowed_path": None,  # a path: filled in by cmd_flags
    "opt_channelslast": False,
    "styles_file": [],
    "autolaunch": False,
    "theme": None,
    "use_textbox_seed": False,
    "disable_console_progressbars": False,
    "enable_console_prompts": False,
    "vae_path": None,
    "disable_safe_unpickle": False,
    "api": False,
    "api_auth": None,
    "api_log": False,
    "nowebui": False,
    "ui_debug_mode": False,
    "device_id": None,
    "administrator": False,
    "cors_allow_origins": None,
    "cors_allow_origins_regex": None,
    "tls_keyfile": None,
    "tls_certfile": None,
    "disable_tls_verify": None,
    "server_name": None,
    "gradio_queue": True,
    "no_gradio_queue": False,
    "skip_version_check": False,
    "no_hashing": False,
    "no_download_sd_model": False,
    "subpath": None,
    "add_stop_route": False,
    "api_server_stop": False,
    "timeout_keep_alive": 30,
    "disable_all_extensions": False,
    "disable_extra_extensions": False,
    "skip_load_model_at_start": False,
    "unix_filenames_sanitization": False,
    "filenames_max_length": 128,
    "no_prompt_history": False,
    "ldsr_models_path": None,  # a path: filled in by cmd_flags
    "lora_dir": None,  # a path: filled in by cmd_flags
    "lyco_dir_backcompat": None,  # a path: filled in by cmd_flags
    "scunet_models_path": None,  # a path: filled in by cmd_flags
    "swinir_models_path": None,  # a path: filled in by cmd_flags
}
# Folders A1111 keeps under its models dir, named as A1111 names them.
_MODEL_FOLDERS = {
    "ckpt_dir": "Stable-diffusion",
    "vae_dir": "VAE",
    "embeddings_dir": "embeddings",
    "hypernetwork_dir": "hypernetworks",
    "lora_dir": "Lora",
    "lyco_dir_backcompat": "LyCORIS",
    "codeformer_models_path": "Codeformer",
    "gfpgan_models_path": "GFPGAN",
    "esrgan_models_path": "ESRGAN",
    "bsrgan_models_path": "BSRGAN",
    "realesrgan_models_path": "RealESRGAN",
    "dat_models_path": "DAT",
    "ldsr_models_path": "LDSR",
    "scunet_models_path": "ScuNET",
    "swinir_models_path": "SwinIR",
}


def cmd_flags(settings: Settings, *, options_file: str | None = None) -> dict[str, Any]:
    """Every A1111 flag: A1111's defaults, and our values where we have the feature (credentials
    are never included: ``api_auth`` and ``gradio_auth`` stay null)."""
    models = settings.resolved_models_dir
    vram = getattr(settings, "vram_mode", "auto")
    live: dict[str, Any] = {
        "api": True,
        "nowebui": True,
        "listen": settings.host == "0.0.0.0",
        "port": settings.port,
        "server_name": settings.host,
        "data_dir": str(settings.data_dir),
        "models_dir": str(models),
        **{dest: str(models / folder) for dest, folder in _MODEL_FOLDERS.items()},
        "ckpt": str(settings.model) if settings.model else None,
        "config": None,  # component configs come from each checkpoint's tensors, not a yaml
        "textual_inversion_templates_dir": "textual_inversion_templates",
        "localizations_dir": "localizations",
        "ui_config_file": str(settings.data_dir / "ui-config.json"),
        "ui_settings_file": options_file or str(settings.data_dir / "a1111-options.json"),
        "gradio_allowed_path": [str(settings.data_dir)],
        "device_id": settings.device.partition(":")[2] or None,
        "use_cpu": ["all"] if settings.device == "cpu" else [],
        "no_half": settings.precision == "fp32",
        "precision": "full" if settings.precision == "fp32" else "autocast",
        "medvram": vram == "medvram",
        "lowvram": vram == "lowvram",
        "api_auth": None,
        "api_server_stop": settings.enable_server_stop,
        "cors_allow_origins": ",".join(settings.cors_allow_origins) or None,
        "loglevel": getattr(settings, "log_level", None),
        "skip_torch_cuda_test": False,
        "sdgate_engine": settings.engine,
        "sdgate_device": settings.device,
    }
    return {**A1111_FLAGS, **live}


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
