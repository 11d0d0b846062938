"""The one alias table: other services' model names -> our models."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from sdgate.core.errors import ModelNotFound
from sdgate.core.models import ModelCatalog
from sdgate.server.model_aliases import alias_family, resolve_model
from sdgate.settings import Settings
from tests.fakes import write_fake_checkpoint


def sdxl_checkpoint(path: Path) -> None:
    """A header-only safetensors with the key layout the catalog reads as SDXL."""
    tensor = {"dtype": "F16", "shape": [1], "data_offsets": [0, 0]}
    header = {
        "model.diffusion_model.input_blocks.0.0.weight": tensor,
        "conditioner.embedders.1.model.ln_final.weight": tensor,
    }
    data = json.dumps(header).encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(struct.pack("<Q", len(data)) + data)


@pytest.mark.parametrize(
    ("name", "family"),
    [
        ("stable-diffusion-v1-6", "sd1"),
        ("stable-diffusion-xl-1024-v1-0", "sdxl"),
        ("STABLE-DIFFUSION-512-V2-1", "sd2"),
        ("core", "sdxl"),
        ("dall-e-3", "sdxl"),
        ("dall-e-2", None),
        ("stabilityai/stable-diffusion-xl-base-1.0", "sdxl"),
        ("runwayml/stable-diffusion-v1-5", "sd1"),
        ("stabilityai/stable-diffusion-2-1", "sd2"),
    ],
)
def test_known_aliases(name: str, family: str | None) -> None:
    assert alias_family(name) == (True, family)


def test_unknown_names() -> None:
    assert alias_family("my-model") == (False, None)
    assert alias_family("someone/some-model") == (False, None)


def test_resolution_order(settings: Settings, models_dir: Path) -> None:
    catalog = ModelCatalog(settings)
    default = catalog.default
    assert resolve_model(catalog, settings, None, dialect="t") == default
    assert resolve_model(catalog, settings, "alpha", dialect="t").name == "alpha"  # exact catalog match
    assert resolve_model(catalog, settings, "dall-e-3", dialect="t") == default  # no SDXL installed
    assert resolve_model(catalog, settings, "who-knows", dialect="t") == default
    with pytest.raises(ModelNotFound):
        resolve_model(catalog, settings.model_copy(update={"strict_models": True}), "who-knows", dialect="t")


def test_alias_picks_a_model_of_its_family(tmp_path: Path) -> None:
    models_dir = tmp_path / "models"
    settings = Settings(data_dir=tmp_path / "data", models_dir=models_dir)
    write_fake_checkpoint(models_dir / "Stable-diffusion" / "alpha.safetensors")
    (models_dir / "Stable-diffusion" / "dall-e-2.safetensors").write_bytes(
        (models_dir / "Stable-diffusion" / "alpha.safetensors").read_bytes()
    )
    sdxl_checkpoint(models_dir / "Stable-diffusion" / "xl.safetensors")
    catalog = ModelCatalog(settings)
    assert resolve_model(catalog, settings, "stable-diffusion-xl-1024-v1-0", dialect="t").name == "xl"
    assert (
        resolve_model(catalog, settings, "dall-e-2", dialect="t").name == "dall-e-2"
    )  # a file so named wins
