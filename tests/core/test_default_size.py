"""One default size per model (``ModelInfo.default_size``), read by every dialect through
``ModelCatalog.defaults_for``: the demo's is 512x512 while its configs still say 256."""

from __future__ import annotations

from pathlib import Path

from sdgate.core.models import BUILTIN_DIR, ModelCatalog
from sdgate.settings import Settings


def test_the_demo_defaults_to_512_but_stays_native_256(tmp_path: Path) -> None:
    catalog = ModelCatalog(Settings(data_dir=tmp_path / "d", models_dir=tmp_path / "m"))
    demo = catalog.default
    assert demo.builtin and demo.filename == BUILTIN_DIR
    assert (demo.native_width, demo.native_height, demo.vae_scale_factor) == (256, 256, 16)
    assert demo.default_size == (512, 512)
    d = catalog.defaults_for(demo)
    assert (d.width, d.height, d.vae_scale_factor) == (512, 512, 16)


def test_a_copy_of_another_builtin_keeps_its_native_size(tmp_path: Path) -> None:
    """Only the shipped demo gets the declared default; any other built-in folder keeps its own."""
    import shutil

    copy = tmp_path / "other-demo"
    shutil.copytree(BUILTIN_DIR, copy, ignore=shutil.ignore_patterns("*.safetensors"))
    catalog = ModelCatalog(Settings(data_dir=tmp_path / "d", models_dir=tmp_path / "m"), builtin_dir=copy)
    assert catalog.default.default_size == (256, 256)
