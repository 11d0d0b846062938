"""Shared fixtures: tiny random SD models on disk, in both layouts A1111 users have.

Nothing here imports torch at import time (tests of the torch-free packages must stay so): the
tiny models are built on first use of ``tiny_models_dir``, once per session.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from sdgate.settings import Settings

# Belt and braces: no test may reach a model hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

V_YAML = 'model:\n  params:\n    parameterization: "v"\n'


@pytest.fixture(scope="session")
def tiny_models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An A1111-layout models folder holding tiny SD 1.x / 2.x / XL models in every format.

    ``Stable-diffusion/``: ``tiny-sd15.safetensors``, ``tiny-sd15-diffusers/``,
    ``tiny-sdxl.safetensors``, ``tiny-sdxl-diffusers/``, ``tiny-sd2-v.safetensors`` (+ ``.yaml``),
    ``tiny-sd15-f4.safetensors`` (a VAE that downsamples by 4) and ``legacy/tiny-sd15.ckpt``.
    """
    from tests import tinymodels as tm

    root = tmp_path_factory.mktemp("models")
    sd = root / "Stable-diffusion"
    sd15, sdxl = tm.tiny_sd(0), tm.tiny_sdxl(0)
    tm.save_single_file(sd15, "sd1", sd / "tiny-sd15.safetensors")
    tm.save_diffusers(sd15, sd / "tiny-sd15-diffusers")
    tm.save_single_file(sd15, "sd1", sd / "legacy" / "tiny-sd15.ckpt")
    tm.save_single_file(sdxl, "sdxl", sd / "tiny-sdxl.safetensors")
    tm.save_diffusers(sdxl, sd / "tiny-sdxl-diffusers")
    tm.save_single_file(tm.tiny_sd(1, family="sd2"), "sd2", sd / "tiny-sd2-v.safetensors")
    (sd / "tiny-sd2-v.yaml").write_text(V_YAML)
    tm.save_single_file(tm.tiny_sd(2, vae_levels=3), "sd1", sd / "tiny-sd15-f4.safetensors")
    return root


@pytest.fixture
def tiny_settings(tmp_path: Path, tiny_models_dir: Path) -> Callable[..., Settings]:
    """``tiny_settings(**overrides)``: CPU settings over ``tiny_models_dir`` with a fresh data dir."""

    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "data_dir": tmp_path / "data",
            "models_dir": tiny_models_dir,
            "device": "cpu",
        }
        values.update(overrides)
        return Settings(**values)

    return make
