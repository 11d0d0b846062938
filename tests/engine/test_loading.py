"""Every family in every format loads through the real code with the weights it was saved with."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

from sdgate.core.errors import InvalidRequest
from sdgate.core.models import ModelCatalog, describe_file
from sdgate.engine import loading
from sdgate.engine.diffusers_engine import DiffusersEngine
from sdgate.settings import Settings
from tests import tinymodels as tm

CPU = torch.device("cpu")


def _load(path: Path, relpath: str | None = None) -> loading.LoadedPipeline:
    info = describe_file(path, relpath or path.name)
    return loading.load_pipeline(info, device=CPU, dtype=torch.float32, vae_dtype=torch.float32)


def _assert_same_weights(original: Any, loaded: Any) -> None:
    for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
        if not hasattr(original, name):
            continue
        a, b = getattr(original, name).state_dict(), getattr(loaded, name).state_dict()
        assert a.keys() == b.keys(), name
        for key in a:
            assert torch.equal(a[key], b[key]), f"{name}.{key}"


@pytest.mark.parametrize(
    ("build", "family", "filename"),
    [
        (lambda: tm.tiny_sd(0), "sd1", "tiny-sd15.safetensors"),
        (lambda: tm.tiny_sd(0), "sd1", "legacy/tiny-sd15.ckpt"),
        (lambda: tm.tiny_sdxl(0), "sdxl", "tiny-sdxl.safetensors"),
        (lambda: tm.tiny_sd(1, family="sd2"), "sd2", "tiny-sd2-v.safetensors"),
        (lambda: tm.tiny_sd(2, vae_levels=3), "sd1", "tiny-sd15-f4.safetensors"),
    ],
)
def test_single_files_load_with_their_weights(
    tiny_models_dir: Path, build: Callable[[], Any], family: str, filename: str
) -> None:
    loaded = _load(tiny_models_dir / "Stable-diffusion" / filename)
    assert loaded.family == family
    _assert_same_weights(build(), loaded.pipeline)
    expected = StableDiffusionXLPipeline if family == "sdxl" else StableDiffusionPipeline
    assert isinstance(loaded.pipeline, expected)


def test_sd2_yaml_selects_v_prediction(tiny_models_dir: Path) -> None:
    loaded = _load(tiny_models_dir / "Stable-diffusion" / "tiny-sd2-v.safetensors")
    assert loaded.v_prediction and not loaded.check_v_prediction
    assert loaded.pipeline.scheduler.config.prediction_type == "v_prediction"
    assert loaded.native_size == 768
    assert loaded.pipeline.tokenizer.pad_token == "!"  # OpenCLIP pads with id 0


def test_sd2_without_yaml_runs_the_v_prediction_test(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tm.save_single_file(tm.tiny_sd(1, family="sd2"), "sd2", tmp_path / "sd2.safetensors")
    calls: list[Any] = []

    def says_v(unet: Any) -> bool:
        calls.append(unet)
        return True

    monkeypatch.setattr(loading, "is_v_prediction", says_v)
    loaded = _load(path)
    assert len(calls) == 1 and loaded.v_prediction
    assert loaded.pipeline.scheduler.config.prediction_type == "v_prediction" and loaded.native_size == 768


def test_the_v_prediction_test_runs_on_a_real_unet() -> None:
    assert loading.is_v_prediction(tm.tiny_sd(0, family="sd2").unet) in (True, False)


@pytest.mark.parametrize(
    ("folder", "family"), [("tiny-sd15-diffusers", "sd1"), ("tiny-sdxl-diffusers", "sdxl")]
)
def test_diffusers_folders_load(tiny_models_dir: Path, folder: str, family: str) -> None:
    catalog = ModelCatalog(Settings(models_dir=tiny_models_dir), builtin_dir=None)
    info = catalog.resolve(folder)
    assert info.family == family
    loaded = loading.load_pipeline(info, device=CPU, dtype=torch.float32, vae_dtype=torch.float32)
    original = tm.tiny_sd(0) if family == "sd1" else tm.tiny_sdxl(0)
    _assert_same_weights(original, loaded.pipeline)


def test_sdxl_vae_gets_its_own_dtype(tiny_models_dir: Path) -> None:
    sd = tiny_models_dir / "Stable-diffusion"
    loaded = loading.load_pipeline(
        describe_file(sd / "tiny-sdxl.safetensors", "x"),
        device=CPU,
        dtype=torch.bfloat16,
        vae_dtype=torch.float32,
    )
    assert loaded.pipeline.unet.dtype == torch.bfloat16 and loaded.pipeline.vae.dtype == torch.float32
    catalog = ModelCatalog(Settings(models_dir=tiny_models_dir), builtin_dir=None)
    folder = loading.load_pipeline(
        catalog.resolve("tiny-sdxl-diffusers"), device=CPU, dtype=torch.bfloat16, vae_dtype=torch.float32
    )
    assert folder.pipeline.unet.dtype == torch.bfloat16 and folder.pipeline.vae.dtype == torch.float32


def test_a_pickle_with_more_than_tensors_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "callback": Settings()}, path)
    with pytest.raises(loading.UnsupportedModel):
        loading.read_state_dict(path)


def test_engine_reports_unloadable_models_as_bad_requests(
    tiny_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    root = tmp_path / "models"
    tm.write_header_only(
        root / "Stable-diffusion" / "refiner.safetensors",
        {
            "model.diffusion_model.input_blocks.0.0.weight": (384, 4, 3, 3),
            "conditioner.embedders.0.model.token_embedding.weight": (49408, 1280),
        },
    )
    (root / "Stable-diffusion" / "other").mkdir()
    (root / "Stable-diffusion" / "other" / "model_index.json").write_text('{"_class_name": "FluxPipeline"}')
    settings = tiny_settings(models_dir=root)
    engine = DiffusersEngine(settings, ModelCatalog(settings, builtin_dir=None))
    for name in ("refiner", "other"):
        with pytest.raises(InvalidRequest) as err:
            engine._get_model(engine.catalog.resolve(name))
        assert err.value.field == "model"


def test_pipeline_bytes_counts_every_module() -> None:
    pipe = tm.tiny_sd(0)
    expected = sum(
        sum(p.numel() * p.element_size() for p in m.parameters())
        + sum(b.numel() * b.element_size() for b in m.buffers())
        for m in (pipe.unet, pipe.vae, pipe.text_encoder)
    )
    assert loading.pipeline_bytes(pipe) == expected > 0
