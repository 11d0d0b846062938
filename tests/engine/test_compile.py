"""Compiled execution (``engine.compile``): warm-up buckets, dispatch, staleness, the disk cache.

Most tests compile with ``backend="eager"``: real ``torch.compile`` (dynamo traces the UNet and the
decoder, guards and all) without inductor's C++ code generation, which takes minutes on this CPU.
The ``slow`` test runs the engine itself with inductor. The tolerance for compiled vs eager is
1e-4 on latents and 1/255 per pixel (inductor fuses and reorders float maths; eager backend: exact).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from sdgate.core.models import ModelCatalog
from sdgate.engine import compile as compilation
from sdgate.engine import lora
from sdgate.engine.compile import Bucket, WarmupError, parse_warmup
from sdgate.engine.diffusers_engine import DiffusersEngine
from sdgate.engine.loading import LoadedPipeline
from sdgate.engine.sampling import decode_latents
from sdgate.engine.tiling import seamless
from sdgate.settings import Settings
from tests import tinymodels as tm
from tests.engine.conftest import generate, pixels
from tests.engine.test_lora import make_lora

SIZE = 64  # the bucket: 64x64, batch 1 (an 8x8 latent)
CPU = torch.device("cpu")


# --- --warmup ---------------------------------------------------------------------------------------


def test_warmup_text_becomes_buckets() -> None:
    assert parse_warmup("512x512:1,4,8;768x768:1") == (
        Bucket(512, 512, 1), Bucket(512, 512, 4), Bucket(512, 512, 8), Bucket(768, 768, 1),
    )  # fmt: skip
    assert parse_warmup(" 1024x768 : 2 , 1 ; ") == (Bucket(1024, 768, 1), Bucket(1024, 768, 2))
    assert parse_warmup("") == () and parse_warmup(" ; ") == ()
    assert parse_warmup("64x64:1;64x64:1") == (Bucket(64, 64, 1),)


@pytest.mark.parametrize(
    "text", ["512x512", "512:1", "512x512:0", "513x512:1", "axb:1", "512x512:1,", "512x512:99", "512x512:1 2"]
)
def test_bad_warmup_text_names_the_flag(text: str) -> None:
    with pytest.raises(WarmupError, match="--warmup"):
        parse_warmup(text)


def test_a_bad_warmup_fails_when_the_engine_starts(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, device="cpu", compile=True, warmup="512by512")
    with pytest.raises(WarmupError, match="--warmup"):
        DiffusersEngine(settings, ModelCatalog(settings, builtin_dir=None))


# --- dispatch, with dynamo's eager backend ------------------------------------------------------------


def _settings(tmp_path: Path, **fields: Any) -> Settings:
    return Settings(data_dir=tmp_path, device="cpu", compile=True, warmup=f"{SIZE}x{SIZE}:1", **fields)


def _compiled(seed: int, tmp_path: Path) -> tuple[Any, Any, compilation.CompiledModel]:
    """A tiny SD 1.5 compiled for the bucket, and an untouched eager copy of it."""
    pipe = tm.tiny_sd(seed)
    pipe.set_progress_bar_config(disable=True)
    eager = copy.deepcopy(pipe)
    model = compilation.prepare(
        LoadedPipeline(pipe, "sd1", False, 8, SIZE), _settings(tmp_path), CPU, backend="eager"
    )
    assert model is not None
    return pipe, eager, model


@pytest.fixture(scope="module")
def compiled(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Any, Any, compilation.CompiledModel]]:
    pipe, eager, model = _compiled(0, tmp_path_factory.mktemp("compiled"))
    yield pipe, eager, model
    compilation.release(pipe)


def _latents(pipe: Any, *, size: int = SIZE, batch: int = 1, cfg: float = 7.0) -> torch.Tensor:
    generators = [torch.Generator().manual_seed(10 + i) for i in range(batch)]
    return pipe(  # type: ignore[no-any-return]
        prompt=["a red circle"] * batch,
        width=size,
        height=size,
        num_inference_steps=3,
        guidance_scale=cfg,
        generator=generators,
        output_type="latent",
    ).images


def _counts(model: compilation.CompiledModel) -> tuple[int, int, int, int]:
    assert model.unet is not None and model.decoder is not None
    return (
        model.unet.compiled_calls,
        model.unet.eager_calls,
        model.decoder.compiled_calls,
        model.decoder.eager_calls,
    )


def test_warm_up_records_the_bucket_and_fuses_qkv(compiled: Any) -> None:
    pipe, _, model = compiled
    assert model.buckets == (Bucket(SIZE, SIZE, 1),)
    assert model.unet.signatures and model.decoder.signatures
    assert {tuple(key[0][0]) for key in model.unet.signatures} == {(2, 4, 8, 8)}  # CFG: cond + uncond rows
    assert model.qkv is not None and len(model.qkv.pairs) == 8  # 2 blocks x (self + cross) x down/up
    assert "forward" in pipe.unet.__dict__ and compilation.compiled_for(pipe) is model


def test_a_bucket_shape_runs_compiled_and_equals_eager(compiled: Any) -> None:
    pipe, eager, model = compiled
    before = _counts(model)
    latents = _latents(pipe)
    images = decode_latents(pipe, latents)
    after = _counts(model)
    assert after[0] - before[0] == 3 and after[1] == before[1]  # 3 steps, all compiled
    assert after[2] - before[2] == 1 and after[3] == before[3]
    torch.testing.assert_close(latents, _latents(eager), atol=1e-4, rtol=0)
    assert np.array_equal(np.asarray(images[0]), np.asarray(decode_latents(eager, _latents(eager))[0]))


@pytest.mark.parametrize(("size", "batch", "cfg"), [(48, 1, 7.0), (SIZE, 2, 7.0), (SIZE, 1, 1.0)])
def test_shapes_outside_the_buckets_run_eager_and_right(
    compiled: Any, size: int, batch: int, cfg: float
) -> None:
    pipe, eager, model = compiled
    before = _counts(model)
    latents = _latents(pipe, size=size, batch=batch, cfg=cfg)
    decode_latents(pipe, latents)
    after = _counts(model)
    assert after[0] == before[0] and after[1] - before[1] == 3
    in_bucket = (size, batch) == (SIZE, 1)  # without CFG the UNet leaves the bucket, the decoder not
    assert (after[2] - before[2], after[3] - before[3]) == ((1, 0) if in_bucket else (0, 1))
    torch.testing.assert_close(latents, _latents(eager, size=size, batch=batch, cfg=cfg), atol=1e-4, rtol=0)


def test_seamless_tiling_runs_eager(compiled: Any) -> None:
    pipe, eager, model = compiled
    before = _counts(model)
    with seamless(pipe, True):
        latents = _latents(pipe)
    assert _counts(model)[0] == before[0]
    with seamless(eager, True):
        torch.testing.assert_close(latents, _latents(eager), atol=1e-4, rtol=0)


def test_a_lora_patched_after_compiling_is_what_runs(compiled: Any, tmp_path: Path) -> None:
    pipe, eager, model = compiled
    base = _latents(pipe)
    path = make_lora(tmp_path / "ink.safetensors", "kohya", 1)
    wanted = [lora.ActiveLora("ink", path, 1.0, 1.0)]
    try:
        lora.apply_loras(pipe, wanted)
        lora.apply_loras(eager, wanted)
        before = _counts(model)
        patched = _latents(pipe)
        assert _counts(model)[0] - before[0] == 3  # still the compiled graph
        assert not torch.allclose(patched, base, atol=1e-3)  # the LoRA shows
        torch.testing.assert_close(patched, _latents(eager), atol=1e-4, rtol=0)
    finally:
        lora.apply_loras(pipe, [])
        lora.apply_loras(eager, [])
    torch.testing.assert_close(_latents(pipe), base, atol=1e-5, rtol=0)  # and unpatching shows too
    assert model.qkv is not None and model.qkv.sync() == 0  # nothing left to copy


def test_another_model_runs_its_own_weights(compiled: Any, tmp_path: Path) -> None:
    pipe, eager, _ = compiled
    other, other_eager, other_model = _compiled(1, tmp_path)
    try:
        first, second = _latents(pipe), _latents(other)
        assert other_model.unet is not None and other_model.unet.compiled_calls >= 3
        assert not torch.allclose(first, second, atol=1e-3)
        torch.testing.assert_close(first, _latents(eager), atol=1e-4, rtol=0)
        torch.testing.assert_close(second, _latents(other_eager), atol=1e-4, rtol=0)
    finally:
        compilation.release(other)
    assert "forward" not in other.unet.__dict__ and "forward" not in other.vae.decoder.__dict__
    assert compilation.compiled_for(other) is None and other_model.unet is None
    assert not any(hasattr(m, "to_qkv") or hasattr(m, "to_kv") for m in other.unet.modules())
    torch.testing.assert_close(_latents(other), _latents(other_eager), atol=1e-4, rtol=0)  # eager again


def test_compile_off_changes_nothing(tmp_path: Path) -> None:
    pipe = tm.tiny_sd(0)
    settings = Settings(data_dir=tmp_path, device="cpu", warmup="64x64:1")
    assert compilation.prepare(LoadedPipeline(pipe, "sd1", False, 8, SIZE), settings, CPU) is None
    assert "forward" not in pipe.unet.__dict__ and not getattr(
        pipe.unet.down_blocks[0], "fused_projections", False
    )


# --- through the engine (eager backend) -----------------------------------------------------------------


@pytest.fixture(scope="module")
def lora_models(tiny_models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    models = tmp_path_factory.mktemp("compile-models")
    (models / "Stable-diffusion").symlink_to(tiny_models_dir / "Stable-diffusion")
    make_lora(models / "Lora" / "ink.safetensors", "kohya", 1)
    return models


def _engine(models: Path, data: Path, **fields: Any) -> DiffusersEngine:
    settings = Settings(data_dir=data, models_dir=models, device="cpu", **fields)
    return DiffusersEngine(settings, ModelCatalog(settings, builtin_dir=None))


def test_the_engine_compiles_at_load_follows_loras_and_drops_graphs_on_eviction(
    lora_models: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    prepare = compilation.prepare
    monkeypatch.setattr(compilation, "prepare", lambda *a, **kw: prepare(*a, **kw, backend="eager"))
    fast = _engine(lora_models, tmp_path / "a", compile=True, warmup=f"{SIZE}x{SIZE}:1")
    plain = _engine(lora_models, tmp_path / "b")
    try:
        for prompt in (
            "a red circle",
            "a red circle <lora:ink:1>",
            "a red circle <lora:ink:0.5>",
            "a red circle",
        ):
            out = generate(fast, prompt=prompt, width=SIZE, height=SIZE, steps=3)
            assert np.array_equal(
                pixels(out)[0], pixels(generate(plain, prompt=prompt, width=SIZE, height=SIZE, steps=3))[0]
            )
        pipe = fast.cache.get(str(fast.catalog.resolve("tiny-sd15").filename)).pipeline
        model = compilation.compiled_for(pipe)
        assert model is not None and model.unet is not None
        assert model.unet.compiled_calls >= 4 * 3 and model.unet.eager_calls == 0
    finally:
        fast.unload()
        plain.unload()
    assert compilation.compiled_for(pipe) is None and "forward" not in pipe.unet.__dict__


# --- the engine with inductor ---------------------------------------------------------------------------


@pytest.mark.slow
def test_the_engine_compiled_with_inductor_matches_eager_and_caches(
    engine: DiffusersEngine, tiny_models_dir: Path, tmp_path: Path
) -> None:
    settings = Settings(
        data_dir=tmp_path, models_dir=tiny_models_dir, device="cpu", compile=True, warmup=f"{SIZE}x{SIZE}:1"
    )
    fast = DiffusersEngine(settings, ModelCatalog(settings, builtin_dir=None))
    try:
        out = generate(fast, width=SIZE, height=SIZE, steps=3)
        model = compilation.compiled_for(
            fast.cache.get(str(fast.catalog.resolve("tiny-sd15").filename)).pipeline
        )
        assert model is not None and model.unet is not None and model.unet.compiled_calls >= 3 + 3
        reference = generate(engine, width=SIZE, height=SIZE, steps=3)
        difference = np.abs(pixels(out)[0].astype(int) - pixels(reference)[0].astype(int))
        assert difference.max() <= 1
        cache = tmp_path / "compile-cache"
        assert any((cache / "inductor").rglob("*")), "inductor's cache is empty"
        assert list(cache.glob("artefacts-*.bin")), "no cache artefacts were saved"
    finally:
        fast.unload()


def test_a_failed_warm_up_leaves_the_model_eager(tmp_path: Path) -> None:
    def broken(graph: Any, inputs: Any) -> Any:
        raise RuntimeError("no compiler today")

    pipe = tm.tiny_sd(0)
    pipe.set_progress_bar_config(disable=True)
    loaded = LoadedPipeline(pipe, "sd1", False, 8, SIZE)
    assert compilation.prepare(loaded, _settings(tmp_path), CPU, backend=broken) is None
    assert "forward" not in pipe.unet.__dict__ and compilation.compiled_for(pipe) is None
    assert not any(hasattr(m, "to_qkv") for m in pipe.unet.modules())  # unfused: LoRA patches show
    torch.testing.assert_close(_latents(pipe), _latents(tm.tiny_sd(0)), atol=1e-5, rtol=0)


def test_cuda_graph_outputs_are_copied_for_the_caller() -> None:
    from diffusers.models.unets.unet_2d_condition import UNet2DConditionOutput

    pool = torch.ones(2, 4)
    for out in (pool, (pool,), UNet2DConditionOutput(sample=pool)):
        owned = compilation._owned(out)
        tensor = owned if isinstance(owned, torch.Tensor) else owned[0]
        assert torch.equal(tensor, pool) and tensor.data_ptr() != pool.data_ptr()
