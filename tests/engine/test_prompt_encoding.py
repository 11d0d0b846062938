"""A1111 prompt encoding on the tiny SD 1.5: chunks, emphasis, long prompts, per-step editing."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from sdgate.core.requests import GenerationRequest
from sdgate.engine.diffusers_engine import DiffusersEngine
from sdgate.engine.prompts import CHUNK, chunk_tokens, encode_text, encode_weighted, prompt_plan
from tests import tinymodels as tm
from tests.engine.conftest import generate, pixels


@pytest.fixture(scope="module")
def pipe() -> Any:
    return tm.tiny_sd(0)


def test_a_short_prompt_is_one_padded_chunk(pipe: Any) -> None:
    chunks = chunk_tokens(pipe.tokenizer, "a red circle")
    assert len(chunks) == 1 and len(chunks[0].tokens) == CHUNK
    assert chunks[0].weights == [1.0] * CHUNK


def test_weights_follow_the_tokens(pipe: Any) -> None:
    (chunk,) = chunk_tokens(pipe.tokenizer, "a (red:1.5) [circle]")
    assert chunk.weights[:3] == [1.0, 1.5, pytest.approx(1 / 1.1)]


def test_break_starts_a_new_chunk(pipe: Any) -> None:
    chunks = chunk_tokens(pipe.tokenizer, "a red circle BREAK a blue square")
    assert len(chunks) == 2
    assert pipe.tokenizer.decode(chunks[1].tokens[:3]) == "a blue square"


def test_long_prompts_are_chunked_and_a_phrase_moves_at_a_comma(pipe: Any) -> None:
    prompt = ", ".join(["red circle"] * 40)  # 40 * 3 - 1 = 119 tokens
    chunks = chunk_tokens(pipe.tokenizer, prompt)
    assert len(chunks) == 2
    comma = pipe.tokenizer.get_vocab()[",</w>"]
    first = [t for t in chunks[0].tokens if t != pipe.tokenizer.eos_token_id]
    assert first[-1] == comma  # the phrase cut by the 75th token moved to the next chunk
    assert encode_weighted(pipe, prompt, None).shape == (1, 2 * 77, tm.TINY)


def test_weight_one_equals_plain_and_emphasis_changes_the_embedding(pipe: Any) -> None:
    plain = encode_weighted(pipe, "a red circle", None)
    assert torch.equal(plain, encode_weighted(pipe, "a (red:1) circle", None))
    assert torch.equal(plain, encode_weighted(pipe, r"a red circle", None))
    emphasised = encode_weighted(pipe, "a (red:1.5) circle", None)
    assert not torch.allclose(plain, emphasised)
    assert emphasised.mean().item() == pytest.approx(plain.mean().item(), rel=1e-4, abs=1e-6)  # mean restored


def test_schedule_switches_embeddings_per_step(pipe: Any) -> None:
    request = GenerationRequest(prompt="a [red:blue:2] circle", negative_prompt="x " * 100, steps=4)
    plan = prompt_plan(pipe, "sd1", request, 4)
    assert [switch.last_step for switch in plan.schedule] == [2, 4]
    first, _ = plan.embeds_for(0)
    later, negative = plan.embeds_for(3)
    assert first.shape == later.shape == negative.shape == (1, 2 * 77, tm.TINY)  # padded to the negative
    assert not torch.equal(first, later)
    assert torch.equal(first[:, :77], encode_weighted(pipe, "a red circle", None))


def test_engine_applies_emphasis_and_long_prompts(engine: DiffusersEngine) -> None:
    base = pixels(generate(engine, prompt="a red circle"))[0]
    assert np.array_equal(base, pixels(generate(engine, prompt="a (red:1.0) circle"))[0])
    assert not np.array_equal(base, pixels(generate(engine, prompt="a (red:1.6) circle"))[0])
    long = generate(engine, prompt=", ".join(["a red circle"] * 60))
    assert long.images[0].image.size == (64, 64)


def test_engine_prompt_editing_differs_from_either_prompt(engine: DiffusersEngine) -> None:
    red, blue = (pixels(generate(engine, prompt=p, steps=4))[0] for p in ("a red circle", "a blue circle"))
    edited = pixels(generate(engine, prompt="a [red:blue:2] circle", steps=4))[0]
    assert not np.array_equal(edited, red) and not np.array_equal(edited, blue)
    # Switching after the last step is the first prompt throughout.
    assert np.array_equal(red, pixels(generate(engine, prompt="a [red:blue:9] circle", steps=4))[0])
    # Switching at step 0 is the second prompt throughout.
    assert np.array_equal(blue, pixels(generate(engine, prompt="a [red:blue:0] circle", steps=4))[0])


def test_extra_network_tags_are_removed_before_encoding(engine: DiffusersEngine) -> None:
    base = pixels(generate(engine, prompt="a red circle"))[0]
    assert np.array_equal(base, pixels(generate(engine, prompt="a red circle<hypernet:x:1>"))[0])


# --- SDXL: both text encoders --------------------------------------------------------------------


@pytest.fixture(scope="module")
def xl() -> Any:
    return tm.tiny_sdxl(0)


def test_sdxl_plain_prompt_matches_diffusers_own_encoding(xl: Any) -> None:
    ours = encode_text(xl, "sdxl", "a red circle", None)
    embeds, negative, pooled, negative_pooled = xl.encode_prompt(
        "a red circle", device="cpu", num_images_per_prompt=1, do_classifier_free_guidance=True
    )
    assert ours.embeds.shape == (1, 77, 2 * tm.TINY)
    assert torch.allclose(ours.embeds, embeds, atol=1e-6)
    assert ours.pooled is not None and torch.allclose(ours.pooled, pooled, atol=1e-6)
    plan = prompt_plan(xl, "sdxl", GenerationRequest(prompt="a red circle", batch_size=2), 3)
    assert torch.equal(plan.kwargs["negative_prompt_embeds"], torch.zeros(2, 77, 2 * tm.TINY))  # as diffusers
    assert torch.equal(plan.kwargs["negative_pooled_prompt_embeds"], negative_pooled.expand(2, -1))
    assert plan.kwargs["pooled_prompt_embeds"].shape == (2, tm.TINY)


def test_sdxl_emphasis_break_and_long_prompts(xl: Any) -> None:
    plain = encode_text(xl, "sdxl", "a red circle", None)
    emphasised = encode_text(xl, "sdxl", "a (red:1.5) circle", None)
    assert not torch.equal(plain.embeds, emphasised.embeds)
    assert torch.equal(plain.embeds, encode_text(xl, "sdxl", "a (red:1) circle", None).embeds)
    broken = encode_text(xl, "sdxl", "a red circle BREAK a blue square", None)
    assert broken.embeds.shape == (1, 2 * 77, 2 * tm.TINY)
    # The pooled vector is text encoder 2's for the first chunk only.
    assert broken.pooled is not None and plain.pooled is not None
    assert torch.allclose(broken.pooled, plain.pooled, atol=1e-6)
    long = encode_text(xl, "sdxl", ", ".join(["red circle"] * 40), None)
    assert long.embeds.shape == (1, 2 * 77, 2 * tm.TINY)
    # A negative prompt is encoded (zeros only when empty), padded to the prompt's length.
    plan = prompt_plan(xl, "sdxl", GenerationRequest(prompt="x " * 100, negative_prompt="blurry"), 3)
    negative = plan.kwargs["negative_prompt_embeds"]
    assert negative.shape == (1, 2 * 77, 2 * tm.TINY) and bool(negative.abs().sum() > 0)
    empty_negative = prompt_plan(xl, "sdxl", GenerationRequest(prompt="x " * 100), 3)
    assert torch.equal(empty_negative.kwargs["negative_prompt_embeds"], torch.zeros(1, 2 * 77, 2 * tm.TINY))


def test_sdxl_prompt_editing_switches_pooled_too(xl: Any) -> None:
    plan = prompt_plan(xl, "sdxl", GenerationRequest(prompt="a [red:blue:2] circle"), 4)
    assert plan.scheduled and "add_text_embeds" in plan.tensor_inputs
    first, last = plan.switch_for(0).parts[0], plan.switch_for(3).parts[0]
    assert first.pooled is not None and last.pooled is not None
    assert not torch.equal(first.pooled, last.pooled)


@pytest.mark.slow
def test_engine_sdxl_emphasis_long_prompts_and_editing(engine: DiffusersEngine) -> None:
    def xl_pixels(prompt: str) -> np.ndarray:
        return pixels(generate(engine, model="tiny-sdxl", prompt=prompt, steps=4))[0]

    base = xl_pixels("a red circle")
    assert np.array_equal(base, xl_pixels("a (red:1.0) circle"))
    assert not np.array_equal(base, xl_pixels("a (red:1.6) circle"))
    assert not np.array_equal(base, xl_pixels("a red BREAK circle"))
    assert xl_pixels(", ".join(["a red circle"] * 40)).shape == (64, 64, 3)
    blue = xl_pixels("a blue circle")
    edited = xl_pixels("a [red:blue:2] circle")
    assert not np.array_equal(edited, base) and not np.array_equal(edited, blue)
    assert np.array_equal(blue, xl_pixels("a [red:blue:0] circle"))


# --- hires fix: the second pass's own timeline ---------------------------------------------------


def test_hires_pass_schedules_over_its_own_steps(
    engine: DiffusersEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Base pass 4 steps, hires 6: ``[a:b:1.5]`` switches halfway through the hires steps and a
    whole number counts from the start of the base pass (A1111's hires timeline)."""
    from sdgate.core.requests import HiresSettings
    from sdgate.engine import hires, prompts

    plans: list[prompts.PromptPlan] = []

    def spy(*args: Any, **kwargs: Any) -> prompts.PromptPlan:
        plans.append(prompts.prompt_plan(*args, **kwargs))
        return plans[-1]

    monkeypatch.setattr(hires, "prompt_plan", spy)
    settings = HiresSettings(scale=1.5, second_pass_steps=6, denoising_strength=0.5)
    generate(engine, prompt="a [red:blue:1.5] circle", steps=4, hires=settings)
    generate(engine, prompt="a [red:blue:6] circle", steps=4, hires=settings)
    hr = settings.model_copy(update={"prompt": "a [cat:dog:1.25] circle"})  # hr_prompt wins
    generate(engine, prompt="a [red:blue:6] circle", steps=4, hires=hr)
    assert [[s.last_step for s in p.schedule] for p in plans] == [[3, 6], [2, 6], [1, 6]]
    assert all(p.steps == 6 for p in plans)
    red_then_blue = [
        torch.equal(p.switch_for(i).parts[0].embeds, plans[0].switch_for(0).parts[0].embeds)
        for p in plans[:1]
        for i in range(6)
    ]
    assert red_then_blue == [True] * 4 + [False] * 2  # steps 0..3 are "red" (<= 3), then "blue"
    # Through the pipeline, switching inside the hires pass changes the picture.
    plain = pixels(generate(engine, prompt="a red circle", steps=4, hires=settings))[0]
    switched = pixels(generate(engine, prompt="a [red:blue:1.5] circle", steps=4, hires=settings))[0]
    assert not np.array_equal(plain, switched)
