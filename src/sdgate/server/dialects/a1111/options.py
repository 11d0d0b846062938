"""A1111's global options over a queue: saved in the data dir, read when a job is submitted.

``sd_model_checkpoint`` set here applies to A1111 jobs submitted afterwards; jobs already queued keep
the model they were submitted with (the model name is part of their stored request). ``sd_vae``
works the same way ("Automatic", "None" or a file name from ``/sd-vae``), and a request's
``override_settings`` with ``override_settings_restore_afterwards: false`` are saved here too.
"""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path
from typing import Any

from sdgate.core.errors import InvalidRequest, ModelNotFound
from sdgate.core.models import VAE_AUTOMATIC, VAE_NONE, ModelCatalog, ModelInfo

log = logging.getLogger("sdgate.a1111")

# Options A1111 refuses to change over the API (``restrict_api``): accepted and ignored.
RESTRICTED = frozenset(
    {
        "api_enable_requests",
        "api_forbid_local_requests",
        "api_useragent",
        "outdir_samples",
        "outdir_grids",
        "outdir_txt2img_samples",
        "outdir_img2img_samples",
        "outdir_txt2img_grids",
        "outdir_img2img_grids",
    }
)

DEFAULTS: dict[str, Any] = {
    "sd_model_checkpoint": None,
    "sd_checkpoint_hash": None,
    "sd_vae": "Automatic",
    "CLIP_stop_at_last_layers": 1.0,  # A1111 serialises int options with non-zero defaults as floats
    "eta_noise_seed_delta": 0,
    "eta_ancestral": 1.0,
    "eta_ddim": 0.0,
    "samples_format": "png",
    "grid_format": "png",
    "jpeg_quality": 80.0,
    "enable_pnginfo": True,
    "return_grid": True,
    "show_progress_every_n_steps": 10.0,
    "live_previews_enable": True,
    "face_restoration": False,
    "face_restoration_model": "CodeFormer",
    "sd_lora": "None",
    "emphasis": "Original",
    "sd_checkpoint_cache": 0,
    "sd_vae_checkpoint_cache": 0,
    "samples_save": True,
    "save_images_add_number": True,
    # save_images: where and how (see outputs.py; folders are relative to the data dir)
    "outdir_samples": "",
    "outdir_grids": "",
    "outdir_txt2img_samples": "outputs/txt2img-images",
    "outdir_img2img_samples": "outputs/img2img-images",
    "outdir_txt2img_grids": "outputs/txt2img-grids",
    "outdir_img2img_grids": "outputs/img2img-grids",
    "save_to_dirs": True,
    "grid_save_to_dirs": True,
    "directories_filename_pattern": "[date]",
    "samples_filename_pattern": "",
    "grid_save": True,
    "grid_only_if_multiple": True,
    "grid_prevent_empty_spots": False,
    "grid_background_color": "#ffffff",
    "n_rows": -1.0,
    "initial_noise_multiplier": 1.0,
    "img2img_fix_steps": False,
    "upscaler_for_img2img": None,
}


class A1111Options:
    def __init__(self, path: Path, catalog: ModelCatalog) -> None:
        self.path = path
        self.catalog = catalog
        self._lock = threading.Lock()
        self._values: dict[str, Any] = {}
        if path.exists():
            try:
                self._values = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                log.warning("ignoring unreadable %s", path)

    def current_model(self) -> ModelInfo:
        """The checkpoint A1111 jobs use now; falls back to the default if the saved one is gone."""
        name = self._values.get("sd_model_checkpoint")
        if name:
            try:
                return self.catalog.resolve(name)
            except ModelNotFound:
                log.warning("saved sd_model_checkpoint %r is gone; using the default model", name)
        return self.catalog.resolve(None)

    def resolve_checkpoint(self, name: Any, *, field: str) -> ModelInfo:
        if not isinstance(name, str) or not name:
            raise ModelNotFound(f"{field}: must be a checkpoint title or name", field=field)
        try:
            return self.catalog.resolve(name)
        except ModelNotFound:
            raise ModelNotFound(f"{field}: model '{name}' not found", field=field) from None

    def vae_for(self, overrides: dict[str, Any] | None, model: ModelInfo) -> str | None:
        """The VAE file name a job on ``model`` uses: ``override_settings.sd_vae`` (an unknown name
        is a 400 naming it), else the saved ``sd_vae`` (gone since: "Automatic", logged)."""
        if overrides and overrides.get("sd_vae") is not None:
            field = "override_settings.sd_vae"
            choice = _vae_choice(overrides["sd_vae"], field=field)
            found = self.catalog.choose_vae(choice, model, field=field)
        else:
            saved = self._values.get("sd_vae") or DEFAULTS["sd_vae"]
            try:
                found = self.catalog.choose_vae(saved, model, field="sd_vae")
            except InvalidRequest:
                log.warning("saved sd_vae %r is gone; using Automatic", saved)
                found = self.catalog.choose_vae(VAE_AUTOMATIC, model, field="sd_vae")
        return found.name if found else None

    def effective(self, overrides: dict[str, Any] | None) -> dict[str, Any]:
        """The options one job runs with: the saved ones under its ``override_settings``."""
        return {**DEFAULTS, **self._values, **(overrides or {})}

    def snapshot(self) -> dict[str, Any]:
        data = dict(DEFAULTS)
        data.update(self._values)
        try:
            model = self.current_model()
        except ModelNotFound:
            return data
        data["sd_model_checkpoint"] = model.title
        data["sd_checkpoint_hash"] = model.sha256
        return data

    def update(self, values: dict[str, Any]) -> None:
        """Apply a (possibly whole, round-tripped) options dict; unchanged values are no-ops."""
        changes = {k: v for k, v in values.items() if k not in RESTRICTED}
        if "sd_model_checkpoint" in changes:
            info = self.resolve_checkpoint(changes["sd_model_checkpoint"], field="sd_model_checkpoint")
            changes["sd_model_checkpoint"] = info.title
            changes.pop("sd_checkpoint_hash", None)
        if "sd_vae" in changes:
            choice = _vae_choice(changes["sd_vae"], field="sd_vae")
            if choice not in (VAE_AUTOMATIC, VAE_NONE):
                found = self.catalog.find_vae(choice)
                if found is None:
                    raise InvalidRequest(f"sd_vae: VAE '{choice}' not found", field="sd_vae")
                choice = found.name
            changes["sd_vae"] = choice
        with self._lock:
            merged = {**self._values, **changes}
            if merged == self._values:
                return
            self._values = merged
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(json.dumps(self._values, indent=1, sort_keys=True), encoding="utf-8")
            tmp.replace(self.path)


def _vae_choice(value: Any, *, field: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise InvalidRequest(f'{field}: must be "Automatic", "None" or a VAE file name', field=field)
    return value.strip()
