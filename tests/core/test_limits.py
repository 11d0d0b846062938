"""``core.limits`` and ``core.tokens``: the torch-free arithmetic the last request check stands on
agrees with what the engine really does."""

from __future__ import annotations

import pytest

from sdgate.core.engine import ModelDefaults
from sdgate.core.limits import Size, estimate_job_memory, hires_size, passes
from sdgate.core.requests import GenerationRequest, HiresSettings
from sdgate.core.tokens import TOKENIZER_DIR, count_tokens

# (first pass, (scale, resize_x, resize_y), factor) -> (upscale size, final size), worked by hand
# from A1111's hr_upscale_to_x/y rules: scale alone; one side keeps the aspect; both crop to fill.
HIRES_CASES = [
    ((512, 768), (2.0, 0, 0), 8, (1024, 1536), (1024, 1536)),
    ((832, 512), (1.5, 0, 0), 8, (1248, 768), (1248, 768)),
    ((512, 768), (1.0, 1024, 0), 8, (1024, 1536), (1024, 1536)),
    ((832, 512), (1.0, 0, 1536), 16, (2496, 1536), (2496, 1536)),
    ((512, 768), (1.0, 2048, 1024), 8, (2048, 3072), (2048, 1024)),
    ((832, 512), (1.0, 640, 1280), 8, (2080, 1280), (640, 1280)),
    ((100, 60), (1.5, 0, 0), 16, (144, 80), (144, 80)),
]


@pytest.mark.parametrize(("first", "target", "factor", "upscale", "final"), HIRES_CASES)
def test_hires_size_follows_a1111(
    first: tuple[int, int], target: tuple[float, int, int], factor: int,
    upscale: tuple[int, int], final: tuple[int, int],
) -> None:
    scale, rx, ry = target
    got = hires_size(Size(*first), HiresSettings(scale=scale, resize_x=rx, resize_y=ry), factor)
    assert (got.upscale.width, got.upscale.height) == upscale
    assert (got.final.width, got.final.height) == final


def test_the_engine_takes_its_hires_size_from_core() -> None:
    hires = pytest.importorskip("sdgate.engine.hires")
    for first, (scale, rx, ry), factor, upscale, final in HIRES_CASES:
        size = hires.target_size(*first, HiresSettings(scale=scale, resize_x=rx, resize_y=ry), factor)
        assert (size.upscale_w, size.upscale_h, size.width, size.height) == (*upscale, *final)


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
