"""AND (composable diffusion): the UNet hook's arithmetic, and every engine path that uses it."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from sdgate.core.engine import EngineInputs, EngineOutput, NoControl
from sdgate.core.requests import GenerationRequest, HiresSettings, Mode
from sdgate.engine import composable
from sdgate.engine.composable import Part, composed
from sdgate.engine.diffusers_engine import DiffusersEngine
from sdgate.engine.prompts import encode_text, encode_weighted, prompt_plan
from tests import tinymodels as tm
from tests.engine.conftest import generate, pixels


@pytest.fixture(scope="module")
def pipe() -> Any:
    return tm.tiny_sd(0)


def _unet(pipe: Any, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
    return pipe.unet(x, torch.tensor(500), encoder_hidden_states=cond, return_dict=False)[0]


def test_the_hook_gives_a1111s_combination(pipe: Any) -> None:
    torch.manual_seed(0)
    x = torch.randn(1, 4, 8, 8)
    u, c0, c1 = (encode_weighted(pipe, t, None) for t in ("", "a red circle", "a blue square long text"))
    parts = [Part(c0, None, 1.2), Part(c1, None, -0.5)]
    with torch.no_grad():
        eu, e0, e1 = _unet(pipe, x, u), _unet(pipe, x, c0), _unet(pipe, x, c1)
        with composed(pipe.unet, 1, lambda: parts):
            out = pipe.unet(torch.cat([x, x]), torch.tensor(500), encoder_hidden_states=torch.cat([u, c0]))
        after = _unet(pipe, x, c0)
    expected = eu + 1.2 * (e0 - eu) - 0.5 * (e1 - eu)
    assert torch.allclose(out.sample[:1], eu, atol=1e-6)
    assert torch.allclose(out.sample[1:], expected, atol=1e-5)
    assert torch.equal(after, e0)  # the hook is gone afterwards
    assert not pipe.unet._forward_hooks


def test_without_guidance_the_parts_are_averaged_by_weight(pipe: Any) -> None:
    torch.manual_seed(1)
    x = torch.randn(2, 4, 8, 8)
    c0, c1 = encode_weighted(pipe, "red", None), encode_weighted(pipe, "blue", None)
    with torch.no_grad():
        e0, e1 = _unet(pipe, x, c0.expand(2, -1, -1)), _unet(pipe, x, c1.expand(2, -1, -1))
        with composed(pipe.unet, 2, lambda: [Part(c0, None, 3.0), Part(c1, None, 1.0)]):
            out = _unet(pipe, x, c0.expand(2, -1, -1))
    assert torch.allclose(out, 0.75 * e0 + 0.25 * e1, atol=1e-5)


def test_plan_splits_the_prompt_but_not_the_negative(pipe: Any) -> None:
    request = GenerationRequest(
        prompt="a red circle :1.5 AND a blue square", negative_prompt="ugly AND blurry"
    )
    plan = prompt_plan(pipe, "sd1", request, 4)
    assert plan.weights == [1.5, 1.0] and plan.composable and not plan.scheduled
    (switch,) = plan.schedule
    assert len(switch.parts) == 2
    assert torch.equal(switch.parts[1].embeds, encode_weighted(pipe, " a blue square", None))
    assert torch.equal(switch.negative.embeds, encode_weighted(pipe, "ugly AND blurry", None))
    one = prompt_plan(pipe, "sd1", GenerationRequest(prompt="a red circle"), 4)
    assert one.weights == [1.0] and not one.composable


def test_and_parts_are_scheduled_each_on_their_own(pipe: Any) -> None:
    request = GenerationRequest(prompt="a [red:blue:2] circle AND a [big:small:3] square")
    plan = prompt_plan(pipe, "sd1", request, 4)
    assert [s.last_step for s in plan.schedule] == [2, 3, 4]
    first, last = plan.switch_for(0), plan.switch_for(4)
    assert torch.equal(first.parts[0].embeds, encode_weighted(pipe, "a red circle ", None))
    assert torch.equal(last.parts[0].embeds, encode_weighted(pipe, "a blue circle ", None))
    assert torch.equal(first.parts[1].embeds, encode_weighted(pipe, " a big square", None))
    assert torch.equal(last.parts[1].embeds, encode_weighted(pipe, " a small square", None))


def test_a_single_part_prompt_never_touches_the_unet(
    engine: DiffusersEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One part of weight 1 runs the stock pipeline exactly as before: no hook is installed."""
    plain = pixels(generate(engine, prompt="a red circle"))[0]

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the AND hook was installed for a single-part prompt")

    monkeypatch.setattr("sdgate.engine.prompts.composed", refuse)
    assert np.array_equal(plain, pixels(generate(engine, prompt="a red circle"))[0])
    assert np.array_equal(plain, pixels(generate(engine, prompt="a red circle :1"))[0])
    monkeypatch.undo()
    assert composable.composed is composed


def test_a_plain_prompt_is_encoded_exactly_as_diffusers_does(pipe: Any) -> None:
    ours = encode_weighted(pipe, "a red circle", None)
    theirs, _ = pipe.encode_prompt("a red circle", "cpu", 1, False)
    assert torch.equal(ours, theirs)


def test_engine_and_changes_the_image_and_weights_matter(engine: DiffusersEngine) -> None:
    red = pixels(generate(engine, prompt="a red circle"))[0]
    both = pixels(generate(engine, prompt="a red circle AND a blue square"))[0]
    weighted = pixels(generate(engine, prompt="a red circle AND a blue square :0.3"))[0]
    assert not np.array_equal(red, both) and not np.array_equal(both, weighted)
    # Two halves of the same prompt are that prompt (up to rounding).
    halves = pixels(generate(engine, prompt="a red circle :0.5 AND a red circle :0.5"))[0]
    assert np.abs(halves.astype(int) - red.astype(int)).max() <= 1
    # A part of weight 0 adds nothing.
    zero = pixels(generate(engine, prompt="a red circle AND a blue square :0"))[0]
    assert np.abs(zero.astype(int) - red.astype(int)).max() <= 1


def test_engine_and_with_prompt_editing_and_no_guidance(engine: DiffusersEngine) -> None:
    edited = pixels(generate(engine, prompt="a [red:blue:2] circle AND a square", steps=4))[0]
    fixed = pixels(generate(engine, prompt="a red circle AND a square", steps=4))[0]
    assert not np.array_equal(edited, fixed)
    out = generate(engine, prompt="a red circle AND a square", cfg_scale=1.0, batch_size=2)
    assert len(out.images) == 2


def _init(size: int = 64) -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8), "RGB")


def _img2img(engine: DiffusersEngine, mask: Image.Image | None = None, **fields: object) -> EngineOutput:
    values: dict[str, object] = {
        "mode": Mode.INPAINT if mask is not None else Mode.IMG2IMG,
        "model": "tiny-sd15",
        "width": 64,
        "height": 64,
        "steps": 4,
        "seed": 7,
        "init_images": ("x",),
    }
    values.update(fields)
    request = GenerationRequest(**values)  # type: ignore[arg-type]
    return engine.generate(request, EngineInputs((_init(),), mask), NoControl())


def test_img2img_and_inpaint_use_and(engine: DiffusersEngine) -> None:
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))
    for m in (None, mask):
        single = pixels(_img2img(engine, m, prompt="a red circle"))[0]
        both = pixels(_img2img(engine, m, prompt="a red circle AND a blue square"))[0]
        assert not np.array_equal(single, both)


def test_hires_second_pass_uses_and(engine: DiffusersEngine) -> None:
    hires = HiresSettings(scale=1.5, second_pass_steps=2, denoising_strength=0.6)
    base = pixels(generate(engine, hires=hires))[0]
    second_only = pixels(
        generate(engine, hires=hires.model_copy(update={"prompt": "a red circle AND a cat"}))
    )[0]
    assert not np.array_equal(base, second_only)


def test_sdxl_and(engine: DiffusersEngine) -> None:
    single = pixels(generate(engine, model="tiny-sdxl", prompt="a red circle"))[0]
    both = pixels(generate(engine, model="tiny-sdxl", prompt="a red circle AND a blue square"))[0]
    assert not np.array_equal(single, both)


def test_sdxl_parts_carry_their_own_pooled_vector() -> None:
    pipe = tm.tiny_sdxl(0)
    plan = prompt_plan(pipe, "sdxl", GenerationRequest(prompt="a red circle AND a blue square"), 3)
    parts = plan.schedule[0].parts
    assert parts[0].pooled is not None and parts[1].pooled is not None
    assert not torch.equal(parts[0].pooled, parts[1].pooled)
    assert torch.equal(parts[1].pooled, encode_text(pipe, "sdxl", " a blue square", None).pooled)
