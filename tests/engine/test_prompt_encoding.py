"""A1111 prompt encoding on the tiny SD 1.5: chunks, emphasis, long prompts, per-step editing."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from sdgate.core.errors import InvalidRequest
from sdgate.core.requests import GenerationRequest
from sdgate.engine.diffusers_engine import DiffusersEngine
from sdgate.engine.prompts import CHUNK, chunk_tokens, encode_weighted, prompt_plan
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
    assert [step for step, _, _ in plan.schedule] == [2, 4]
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


def test_and_is_refused_clearly(engine: DiffusersEngine) -> None:
    with pytest.raises(InvalidRequest) as err:
        generate(engine, prompt="a cat AND a dog")
    assert err.value.field == "prompt" and "AND" in err.value.message
