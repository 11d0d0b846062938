"""``core.batching.batch_key``: which requests may share a UNet batch, and which always run alone."""

from __future__ import annotations

import pytest

from sdgate.core import batching
from sdgate.core.batching import KEY_CHARS, MAX_ROWS_PER_JOB, batch_key
from sdgate.core.requests import GenerationRequest, HiresSettings, LoraRef, Mode, PostprocessRequest

BASE = {"prompt": "a red circle", "width": 512, "height": 512, "steps": 20, "sampler": "Euler a"}


def _key(**changes: object) -> str | None:
    return batch_key(GenerationRequest(**{**BASE, **changes}))


def test_a_plain_txt2img_has_a_key_of_the_column_width() -> None:
    key = _key()
    assert key is not None and len(key) == KEY_CHARS


@pytest.mark.parametrize(
    "changes",
    [
        {"prompt": "a blue square"},
        {"negative_prompt": "blurry"},
        {"cfg_scale": 3.5},
        {"seed": 12345},
        {"batch_size": 4},
        {"n_iter": 2},
        {"prompt": "(a red circle:1.3), [soft]"},  # attention weights stay per row
    ],
)
def test_what_rows_may_differ_in_keeps_the_key(changes: dict[str, object]) -> None:
    assert _key(**changes) == _key()


@pytest.mark.parametrize(
    "changes",
    [
        {"model": "other"},
        {"vae": "kl-f8.safetensors"},
        {"width": 768},
        {"height": 640},
        {"steps": 21},
        {"sampler": "DPM++ 2M"},
        {"scheduler": "Karras"},
        {"eta": 0.5},
        {"clip_skip": 2},
        {"tiling": True},
        {"loras": (LoraRef(name="detail"),)},
        {"prompt": "a red circle <lora:detail:0.6>"},
        {"styles": ("cinematic",)},
        {"cfg_scale": 1.0},  # no guidance: one UNet row per image instead of two
        {"restore_faces": "GFPGAN"},
    ],
)
def test_what_the_batch_shares_changes_the_key(changes: dict[str, object]) -> None:
    key = _key(**changes)
    assert key is not None and key != _key()


def test_lora_weights_are_part_of_the_key() -> None:
    half, more = LoraRef(name="x", unet_weight=0.5), LoraRef(name="x", unet_weight=0.6)
    assert _key(loras=(half,)) != _key(loras=(more,))
    assert _key(prompt="a <lora:x:0.5>") != _key(prompt="a <lora:x:0.6>")


@pytest.mark.parametrize(
    "changes",
    [
        {"mode": Mode.IMG2IMG, "init_images": ("img_1",), "denoising_strength": 0.5},
        {"hires": HiresSettings(scale=1.5)},
        {"refiner": "xl-refiner", "refiner_switch_at": 0.8},
        {"subseed_strength": 0.3},
        {"seed_resize_from_w": 256, "seed_resize_from_h": 256},
        {"s_min_uncond": 0.5},
        {"prompt": "a [red|blue] circle"},  # alternation: the text changes every step
        {"prompt": "a [red:blue:0.5] circle"},  # prompt editing
        {"negative_prompt": "[blurry:sharp:5]"},
        {"prompt": "a red circle AND a blue square"},  # composable diffusion
        {"batch_size": MAX_ROWS_PER_JOB, "n_iter": 2},  # more rows than one job may bring
    ],
)
def test_what_cannot_be_split_into_rows_runs_alone(changes: dict[str, object]) -> None:
    assert _key(**changes) is None


def test_a_postprocess_job_runs_alone() -> None:
    assert batch_key(PostprocessRequest(init_images=("img_1",))) is None


@pytest.mark.parametrize("prompt", [
    "a red circle", "(a cat:1.3), masterpiece", "a cat <lora:ink:0.5>", "a [cat:dog:5]", "a [cat|dog]",
    "a cat AND a dog", "ANDROID on a table", "a <lora:x:1> [cat:dog:0.5]", "a cat :1.2 AND a dog :0.5",
    "BRAND new [logo]", "", "[]", "<>", "a (b:[c:d:3])",
])
def test_the_quick_look_at_a_prompt_agrees_with_its_parse(prompt: str) -> None:
    """``_plain_prompt`` answers a prompt with no ``[`` and no ``AND`` without parsing it, and
    ``_networks`` one with no ``<``: the answer must be the full parse's."""
    from sdgate.core.prompts import extract_networks, parse_prompt, split_and

    text, networks = extract_networks(prompt)
    plain = len(split_and(text)) == 1 and all(len(s) <= 1 for s, _ in parse_prompt(text, 1000).parts)
    assert batching._plain_prompt(prompt) is plain
    assert bool(batching._networks(prompt)) is bool(networks)
