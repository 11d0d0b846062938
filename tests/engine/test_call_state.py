"""Per-call pipeline state stays in its call: a LoRA, VAE or scheduler one job chose does not
reach the next job, even when that job failed half-way."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from sdgate.core.models import ModelCatalog
from sdgate.engine.diffusers_engine import DiffusersEngine
from sdgate.settings import Settings
from tests.engine.conftest import generate, pixels
from tests.engine.test_lora import make_lora
from tests.engine.test_vae import vae_state, write_vae


@pytest.fixture(scope="module")
def state_engine(tiny_models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> DiffusersEngine:
    models = tmp_path_factory.mktemp("call-state-models")
    (models / "Stable-diffusion").symlink_to(tiny_models_dir / "Stable-diffusion")
    make_lora(models / "Lora" / "ink.safetensors", "kohya", 1)
    (models / "Lora" / "broken.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}garbage")
    write_vae(models / "VAE" / "blue.safetensors", vae_state(7, "ldm"))
    settings = Settings(data_dir=tmp_path_factory.mktemp("data"), models_dir=models, device="cpu")
    return DiffusersEngine(settings, ModelCatalog(settings, builtin_dir=None))


def same(a: list[np.ndarray], b: list[np.ndarray]) -> bool:
    return len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


def test_a_lora_vae_and_scheduler_of_one_job_do_not_reach_the_next(state_engine: DiffusersEngine) -> None:
    plain = pixels(generate(state_engine))
    model = state_engine.cache.get(state_engine.cache.keys_by_age()[-1])
    assert model is not None
    pipe = model.pipeline
    own_scheduler, own_vae = pipe.scheduler, dict(pipe.vae.named_children())
    weights = {k: v.clone() for k, v in pipe.unet.state_dict().items() if "attn" in k}

    chosen = generate(
        state_engine, prompt="a red circle <lora:ink:1>", vae="blue.safetensors",
        sampler="DPM++ 2M", scheduler="karras",
    )  # fmt: skip
    assert not same(pixels(chosen), plain)
    assert "Lora hashes" in chosen.images[0].infotext and "VAE: blue" in chosen.images[0].infotext
    # After the call the pipeline holds its own scheduler and VAE again.
    assert pipe.scheduler is own_scheduler and dict(pipe.vae.named_children()) == own_vae

    after = generate(state_engine)
    assert same(pixels(after), plain)
    assert "Lora hashes" not in after.images[0].infotext and "VAE:" not in after.images[0].infotext
    assert all(np.array_equal(v, pipe.unet.state_dict()[k]) for k, v in weights.items())


def test_a_lora_set_that_fails_half_way_leaves_the_base_weights(state_engine: DiffusersEngine) -> None:
    plain = pixels(generate(state_engine))
    with pytest.raises(Exception):  # noqa: B017 - whatever the safetensors reader raises
        generate(state_engine, prompt="a red circle <lora:ink:1> <lora:broken:1>")
    assert same(pixels(generate(state_engine)), plain)
