"""``core.limits`` and ``core.tokens``: the torch-free arithmetic the last request check stands on
agrees with what the engine really does."""

from __future__ import annotations

import itertools

import pytest

from sdgate.core.engine import ModelDefaults
from sdgate.core.limits import Size, estimate_job_memory, hires_size, passes
from sdgate.core.requests import GenerationRequest, HiresSettings
from sdgate.core.tokens import TOKENIZER_DIR, count_tokens


def test_hires_size_is_the_engines() -> None:
    hires = pytest.importorskip("sdgate.engine.hires")
    sizes = [(64, 64), (512, 768), (832, 512), (1024, 1024)]
    targets = [(2.0, 0, 0), (1.5, 0, 0), (1.0, 1024, 0), (1.0, 0, 1536), (1.0, 2048, 1024), (1.0, 640, 1280)]
    for (w, h), (scale, rx, ry), factor in itertools.product(sizes, targets, (8, 16)):
        settings = HiresSettings(scale=scale, resize_x=rx, resize_y=ry)
        ours = hires_size(Size(w, h), settings, factor)
        theirs = hires.target_size(w, h, settings, factor)
        assert (ours.upscale.width, ours.upscale.height, ours.final.width, ours.final.height) == (
            theirs.upscale_w, theirs.upscale_h, theirs.width, theirs.height
        )


def test_passes_and_memory() -> None:
    defaults = ModelDefaults("m", 512, 512, 20, vae_scale_factor=8)
    shape = passes(GenerationRequest(hires=HiresSettings(scale=2, second_pass_steps=10)), defaults)
    assert (shape.first, shape.largest, shape.total_steps) == (Size(512, 512), Size(1024, 1024), 30)
    plain = passes(GenerationRequest(), defaults)
    one = estimate_job_memory(GenerationRequest(), plain, family="sd1", weights=0)
    four = estimate_job_memory(
        GenerationRequest(batch_size=4), passes(GenerationRequest(), defaults), family="sd1", weights=10
    )
    assert four == 4 * one + 10
    fp32 = estimate_job_memory(
        GenerationRequest(), passes(GenerationRequest(), defaults), family="sd1", weights=0, value_bytes=4
    )
    assert fp32 == 2 * one


def test_token_count_is_clips() -> None:
    transformers = pytest.importorskip("transformers")
    files = (str(TOKENIZER_DIR / "vocab.json"), str(TOKENIZER_DIR / "merges.txt"))
    reference = transformers.CLIPTokenizer(*files)
    for prompt in ["a red circle", "masterpiece, (best quality:1.2), <lora:foo:0.8>, Café's 123!!",
                   "日本語 😀 emoji", "don't   STOP\n\nbelieving [a|b] AND c", "x" * 500, "", "   "]:
        assert count_tokens(prompt) == len(reference(prompt, add_special_tokens=False).input_ids), prompt
