"""txt2img through the real pipelines on tiny models: sizes, defaults, seeds, infotexts, errors."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from sdgate.core.errors import InvalidRequest, ModelNotFound, OutOfMemory
from sdgate.core.infotext import parse_infotext
from sdgate.core.requests import Mode
from sdgate.engine.diffusers_engine import DiffusersEngine
from tests.engine.conftest import generate, pixels


@pytest.mark.parametrize(
    ("model", "width", "height"),
    [
        ("tiny-sd15", 64, 64),
        ("tiny-sd15", 48, 80),
        ("tiny-sd15-diffusers", 80, 48),
        ("legacy_tiny-sd15", 40, 40),
        ("tiny-sdxl", 72, 56),
        ("tiny-sdxl-diffusers", 64, 48),
        ("tiny-sd2-v", 48, 64),
        ("tiny-sd15-f4", 36, 20),  # a VAE that downsamples by 4: sizes need only be multiples of 4
    ],
)
def test_sizes_of_every_model(engine: DiffusersEngine, model: str, width: int, height: int) -> None:
    out = generate(engine, model=model, width=width, height=height, batch_size=2)
    assert [img.image.size for img in out.images] == [(width, height)] * 2
    assert (out.width, out.height, out.steps) == (width, height, 3)
    assert all(img.image.mode == "RGB" for img in out.images)
    assert out.model_name == model and out.model_hash and len(out.model_hash) == 10


@pytest.mark.parametrize(("model", "factor"), [("tiny-sd15", 8), ("tiny-sd15-f4", 4)])
def test_sizes_must_be_multiples_of_the_models_own_vae_factor(
    engine: DiffusersEngine, model: str, factor: int
) -> None:
    assert engine.model_defaults(model).vae_scale_factor == factor
    with pytest.raises(InvalidRequest) as err:
        generate(engine, model=model, width=64 + factor // 2)
    assert err.value.field == "width" and f"multiple of {factor}" in err.value.message
    with pytest.raises(InvalidRequest) as err:
        generate(engine, model=model, height=64 + factor // 2)
    assert err.value.field == "height"


def test_size_and_steps_default_to_the_models_own(engine: DiffusersEngine) -> None:
    defaults = engine.model_defaults("tiny-sd15-diffusers")
    assert (defaults.width, defaults.height, defaults.steps) == (64, 64, 20)  # unet sample 8 x VAE 8
    out = generate(engine, model="tiny-sd15-diffusers", width=None, height=None, steps=None)
    assert (out.width, out.height, out.steps) == (64, 64, 20)
    assert engine.model_defaults("tiny-sdxl").width == 1024
    assert engine.model_defaults("tiny-sd2-v").width == 768  # its .yaml says v-prediction


def test_same_request_same_pixels(engine: DiffusersEngine) -> None:
    for sampler in ("Euler", "Euler a", "DPM++ 2M SDE"):
        first = pixels(generate(engine, sampler=sampler, batch_size=2))
        second = pixels(generate(engine, sampler=sampler, batch_size=2))
        assert all(np.array_equal(a, b) for a, b in zip(first, second, strict=True)), sampler


@pytest.mark.parametrize("sampler", ["Euler", "Euler a", "DPM++ SDE"])
def test_image_i_of_a_batch_is_seed_plus_i_alone(engine: DiffusersEngine, sampler: str) -> None:
    batch = generate(engine, sampler=sampler, seed=500, batch_size=3)
    assert [img.seed for img in batch.images] == [500, 501, 502]
    alone = generate(engine, sampler=sampler, seed=502)
    a, b = pixels(batch)[2].astype(int), pixels(alone)[0].astype(int)
    # Batched kernels may round the last bit differently; the noise itself is the same.
    assert np.abs(a - b).max() <= 1 and (a == b).mean() > 0.99


def test_iterations_continue_the_seeds(engine: DiffusersEngine) -> None:
    out = generate(engine, seed=10, batch_size=2, n_iter=2)
    assert [img.seed for img in out.images] == [10, 11, 12, 13]
    third = generate(engine, seed=12)
    assert np.abs(pixels(out)[2].astype(int) - pixels(third)[0].astype(int)).max() <= 1


def test_different_seeds_prompts_and_largest_seed(engine: DiffusersEngine) -> None:
    base = pixels(generate(engine, seed=1))[0]
    assert not np.array_equal(base, pixels(generate(engine, seed=2))[0])
    assert not np.array_equal(base, pixels(generate(engine, seed=1, prompt="a blue square"))[0])
    top = generate(engine, seed=2**64 - 1, batch_size=2)
    assert [img.seed for img in top.images] == [2**64 - 1, 0]


def test_variation_seed_changes_the_image_and_is_recorded(engine: DiffusersEngine) -> None:
    plain = generate(engine, seed=7)
    varied = generate(engine, seed=7, subseed=99, subseed_strength=0.5)
    assert not np.array_equal(pixels(plain)[0], pixels(varied)[0])
    params = parse_infotext(varied.images[0].infotext)
    assert params["Variation seed"] == "99" and params["Variation seed strength"] == "0.5"
    assert varied.images[0].subseed == 99


def test_clip_skip_changes_the_image_and_is_recorded(engine: DiffusersEngine) -> None:
    one, two = generate(engine, clip_skip=1), generate(engine, clip_skip=2)
    assert not np.array_equal(pixels(one)[0], pixels(two)[0])
    assert "Clip skip" not in one.images[0].infotext
    assert parse_infotext(two.images[0].infotext)["Clip skip"] == "2"


def test_infotext_is_a1111s(engine: DiffusersEngine) -> None:
    out = generate(
        engine,
        negative_prompt="blurry",
        sampler="DPM++ 2M",
        scheduler="automatic",
        cfg_scale=6.5,
        seed=42,
        width=48,
        height=32,
    )
    info = out.images[0].infotext
    assert info.startswith(
        "a red circle\nNegative prompt: blurry\nSteps: 3, Sampler: DPM++ 2M, Schedule type: Karras,"
    )
    params = parse_infotext(info)
    assert params["CFG scale"] == "6.5" and params["Seed"] == "42"
    assert (params["Size-1"], params["Size-2"]) == ("48", "32")
    assert params["Model"] == "tiny-sd15" and params["Model hash"] == out.model_hash
    assert params["Version"] == "v1.10.1"
    assert out.sampler == "DPM++ 2M" and out.scheduler == "karras"
    assert out.images[0].prompt == "a red circle" and out.images[0].negative_prompt == "blurry"


def test_a_stand_in_sampler_says_so_in_the_infotext(engine: DiffusersEngine) -> None:
    out = generate(engine, sampler="DPM fast")
    note = parse_infotext(out.images[0].infotext)["Sampler note"]
    assert "DPM fast is not in diffusers" in str(note) and out.notes == [note]


def test_sdxl_and_guidance_off(engine: DiffusersEngine) -> None:
    out = generate(engine, model="tiny-sdxl", cfg_scale=1.0, negative_prompt="")
    assert out.images[0].image.size == (64, 64)


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"mode": Mode.IMG2IMG, "init_images": ("abc",)}, "init_images"),  # ids, but no decoded images
        ({"mode": Mode.INPAINT}, "init_images"),
        ({"sampler": "k_euler"}, "sampler"),
    ],
)
def test_what_is_not_supported_yet_is_refused(
    engine: DiffusersEngine, fields: dict[str, Any], field: str
) -> None:
    with pytest.raises(InvalidRequest) as err:
        generate(engine, **fields)
    assert err.value.field == field


def test_unknown_model(engine: DiffusersEngine) -> None:
    with pytest.raises(ModelNotFound):
        generate(engine, model="nope")


def test_out_of_memory_names_what_to_lower(engine: DiffusersEngine, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    def boom(*_: object, **__: object) -> None:
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    model = engine._get_model(engine.catalog.resolve("tiny-sd15"))
    monkeypatch.setattr(type(model.pipeline), "__call__", boom)
    with pytest.raises(OutOfMemory) as err:
        generate(engine, batch_size=4, width=96)
    assert "batch_size" in err.value.message and "96x64" in err.value.message
