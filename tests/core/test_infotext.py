from __future__ import annotations

import pytest

from sdgate.core.infotext import (
    A1111_VERSION,
    PARSER_DEFAULTS,
    format_infotext,
    format_value,
    parse_infotext,
    uses_emphasis,
)

# The spec's "typical v1.10 output" (§4.1).
A1111_EXAMPLE = (
    "a photo of a cat <lora:add_detail:0.5>\n"
    "Negative prompt: blurry\n"
    "Steps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 1234567890, "
    "Size: 512x512, Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, "
    'Lora hashes: "add_detail: 7c6bad76eb54", '
    "Version: v1.10.1"
)

# The example in parse_generation_parameters' own docstring (pre-1.9, no Schedule type).
A1111_DOCSTRING_EXAMPLE = (
    "girl with an artist's beret, determined, blue eyes, desert scene, computer monitors, heavy makeup, "
    "by Alphonse Mucha and Charlie Bowater, ((eyeshadow)), (coquettish), detailed, intricate\n"
    "Negative prompt: ugly, fat, obese, chubby, (((deformed))), [blurry], bad anatomy, disfigured, "
    "poorly drawn face, mutation, mutated, (extra_limb), (ugly), (poorly drawn hands), messy drawing\n"
    "Steps: 20, Sampler: Euler a, CFG scale: 7, Seed: 965400086, Size: 512x512, Model hash: 45dee52b"
)


def test_version_constant() -> None:
    assert A1111_VERSION == "v1.10.1"


def test_format_reproduces_a1111_example() -> None:
    text = format_infotext(
        "a photo of a cat <lora:add_detail:0.5>",
        "blurry",
        {
            "Steps": 20,
            "Sampler": "DPM++ 2M",
            "Schedule type": "Karras",
            "CFG scale": 7.0,
            "Seed": 1234567890,
            "Size": "512x512",
            "Model hash": "6ce0161689",
            "Model": "v1-5-pruned-emaonly",
            "Lora hashes": "add_detail: 7c6bad76eb54",
            "Version": "v1.10.1",
        },
    )
    assert text == A1111_EXAMPLE


def test_format_orders_fixed_keys_then_extras_then_version() -> None:
    params = {
        "Version": A1111_VERSION,
        "Hires upscaler": "Latent",
        "Seed": 1,
        "User": "me",
        "Denoising strength": 0.7,
        "Steps": 20,
        "Lora hashes": "x: 1",
        "Size": "64x64",
        "Sampler": "Euler",
        "Tiling": "True",
        "Clip skip": 2,
    }
    line = format_infotext("p", "", params)
    keys = [part.split(":")[0] for part in line.split("\n")[-1].split(", ")]
    assert keys == [
        "Steps", "Sampler", "Seed", "Size", "Denoising strength", "Clip skip", "Tiling",
        "Hires upscaler", "Lora hashes", "Version", "User",
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("value", "written"),
    [
        (7.0, "7"),
        (0.75, "0.75"),
        (7.5, "7.5"),
        (1e-05, "1e-05"),
        (20, "20"),
        (True, "True"),
        ("DPM++ 2M", "DPM++ 2M"),
        ("a, b", '"a, b"'),
        ("a: b", '"a: b"'),
        ("line\nbreak", '"line\\nbreak"'),
        ('say "hi", ok', '"say \\"hi\\", ok"'),
        ('"quoted"', '"\\"quoted\\""'),  # A1111 would write it bare and read it back unquoted
        ("ünïcödé, ok", '"ünïcödé, ok"'),  # ensure_ascii=False
        ("", ""),  # A1111 writes "Key: " (and strips the text's trailing space)
    ],
)
def test_format_values(value: object, written: str) -> None:
    assert format_infotext("p", "", {"Steps": 1, "Key": value}) == f"p\nSteps: 1, Key: {written}".strip()


def test_format_value_non_finite() -> None:
    assert format_value(float("inf")) == "inf"
    assert format_value(float("nan")) == "nan"


def test_format_omits_none_and_writes_key_alone_when_equal() -> None:
    text = format_infotext("p", "", {"Steps": 20, "Face restoration": None, "Pad conds": "Pad conds"})
    assert text == "p\nSteps: 20, Pad conds"


@pytest.mark.parametrize(
    ("prompt", "negative", "expected"),
    [
        ("cat", "", "cat\nSteps: 5"),
        ("", "", "Steps: 5"),
        ("", "dog", "Negative prompt: dog\nSteps: 5"),
        ("two\nlines", "neg\nalso", "two\nlines\nNegative prompt: neg\nalso\nSteps: 5"),
    ],
)
def test_format_prompt_lines(prompt: str, negative: str, expected: str) -> None:
    assert format_infotext(prompt, negative, {"Steps": 5}) == expected


def test_format_with_no_params() -> None:
    assert format_infotext("cat", "dog", {}) == "cat\nNegative prompt: dog"


def test_parse_a1111_example() -> None:
    res = parse_infotext(A1111_EXAMPLE)
    assert res["Prompt"] == "a photo of a cat <lora:add_detail:0.5>"
    assert res["Negative prompt"] == "blurry"
    assert res["Steps"] == "20"
    assert res["Sampler"] == "DPM++ 2M"
    assert res["Schedule type"] == "Karras"
    assert res["CFG scale"] == "7"
    assert res["Seed"] == "1234567890"
    assert (res["Size-1"], res["Size-2"]) == ("512", "512")
    assert "Size" not in res
    assert res["Model hash"] == "6ce0161689"
    assert res["Model"] == "v1-5-pruned-emaonly"
    assert res["Lora hashes"] == "add_detail: 7c6bad76eb54"
    assert res["Version"] == "v1.10.1"
    assert res["Clip skip"] == "1"
    assert "Emphasis" not in res


def test_parse_docstring_example() -> None:
    res = parse_infotext(A1111_DOCSTRING_EXAMPLE)
    assert str(res["Prompt"]).startswith("girl with an artist's beret")
    assert str(res["Negative prompt"]).endswith("messy drawing")
    assert res["Sampler"] == "Euler a"
    assert res["Model hash"] == "45dee52b"
    assert res["Schedule type"] == "Automatic"  # a default: the infotext predates 1.9
    assert res["Emphasis"] == "Original"  # ((eyeshadow))


def test_parser_defaults_fill_missing_keys() -> None:
    res = parse_infotext("cat\nSteps: 20, Sampler: Euler, Seed: 1")
    assert {k: res[k] for k in ("Prompt", "Negative prompt", "Steps", "Sampler", "Seed")} == {
        "Prompt": "cat",
        "Negative prompt": "",
        "Steps": "20",
        "Sampler": "Euler",
        "Seed": "1",
    }
    expected_defaults = {
        "Clip skip": "1",
        "Hires resize-1": 0,
        "Hires resize-2": 0,
        "Hires sampler": "Use same sampler",
        "Hires schedule type": "Use same scheduler",
        "Hires checkpoint": "Use same checkpoint",
        "Hires prompt": "",
        "Hires negative prompt": "",
        "Mask mode": "Inpaint masked",
        "Masked content": "original",
        "Inpaint area": "Whole picture",
        "Masked area padding": 32,
        "RNG": "GPU",
        "Schedule type": "Automatic",
        "Schedule max sigma": 0,
        "Schedule min sigma": 0,
        "Schedule rho": 0,
        "VAE Encoder": "Full",
        "VAE Decoder": "Full",
        "FP8 weight": "Disable",
        "Refiner switch by sampling steps": False,
    }
    assert {k: v for k, v in res.items() if k in expected_defaults} == expected_defaults
    assert set(res) == {"Prompt", "Negative prompt", "Steps", "Sampler", "Seed", *expected_defaults}
    assert {k for k, _ in PARSER_DEFAULTS} | {"Hires resize-2", "Refiner switch by sampling steps"} == set(
        expected_defaults
    )


def test_parser_keeps_given_values_over_defaults() -> None:
    res = parse_infotext(
        "x\nSteps: 1, Clip skip: 2, RNG: CPU, Hires resize: 1024x768, "
        "FP8 weight: Enable for SDXL, Emphasis: No norm"
    )
    assert res["Clip skip"] == "2"
    assert res["RNG"] == "CPU"
    assert (res["Hires resize-1"], res["Hires resize-2"]) == ("1024", "768")
    assert res["FP8 weight"] == "Enable for SDXL"
    assert res["Cache FP16 weight for LoRA"] is False  # only added when FP8 is on
    assert res["Emphasis"] == "No norm"


def test_last_line_needs_three_params() -> None:
    res = parse_infotext("a cat\nNegative prompt: dog\nSteps: 20, Seed: 1")
    assert res["Negative prompt"] == "dog\nSteps: 20, Seed: 1"
    assert "Steps" not in res


def test_text_without_params() -> None:
    res = parse_infotext("just a prompt")
    assert res["Prompt"] == "just a prompt"
    assert res["Negative prompt"] == ""
    assert res["Clip skip"] == "1"


def test_empty_text() -> None:
    res = parse_infotext("")
    assert res["Prompt"] == "" and res["Negative prompt"] == ""


def test_multiline_prompts_and_crlf() -> None:
    text = (
        "line one\r\n\r\nline two\r\nNegative prompt: bad\r\nworse\r\nSteps: 20, Sampler: Euler, Seed: 3\r\n"
    )
    res = parse_infotext(text)
    assert res["Prompt"] == "line one\n\nline two"
    assert res["Negative prompt"] == "bad\nworse"
    assert res["Seed"] == "3"


def test_empty_value_is_dropped_like_a1111() -> None:
    res = parse_infotext("p\nSteps: 20, Model: , Seed: 1, Sampler: Euler")
    assert "Model" not in res
    assert res["Seed"] == "1"


def test_hypernet_is_appended_to_prompt() -> None:
    res = parse_infotext("cat\nSteps: 20, Seed: 1, Hypernet: anime, Hypernet strength: 0.5")
    assert res["Prompt"] == "cat<hypernet:anime:0.5>"


def test_pre_19_sampler_stays_a_string() -> None:
    res = parse_infotext("cat\nSteps: 20, Sampler: DPM++ 2M Karras, CFG scale: 7, Seed: 1, Size: 512x768")
    assert res["Sampler"] == "DPM++ 2M Karras"
    assert (res["Size-1"], res["Size-2"]) == ("512", "768")


ROUND_TRIP = [
    ("a cat", "", {"Steps": 20, "Sampler": "Euler", "Seed": 5}),
    ("a cat\non two lines", "blurry\nugly", {"Steps": 20, "CFG scale": 7.5, "Seed": 5}),
    (
        "(masterpiece:1.2), <lora:x:0.6>",
        "bad hands, extra fingers",
        {
            "Steps": 30,
            "Sampler": "DPM++ 2M",
            "Schedule type": "Karras",
            "CFG scale": 7.0,
            "Seed": 18446744073709551615,
            "Size": "832x1216",
            "Model hash": "abc",
            "Model": "x",
            "Denoising strength": 0.75,
            "Lora hashes": "x: 7c6bad76eb54, y: 0123456789ab",
            "Hires prompt": 'with "quotes", commas: and colons\nand lines',
            "Emphasis": "Original",
            "Version": A1111_VERSION,
        },
    ),
    ("ünïcödé 猫", "", {"Steps": 1, "Sampler": "Euler a", "Seed": 0, "Model": "模型"}),
    ("", "", {"Steps": 1, "Sampler": "Euler a", "Seed": 0, "Note": '"starts quoted"'}),
]


@pytest.mark.parametrize(("prompt", "negative", "params"), ROUND_TRIP)
def test_round_trip(prompt: str, negative: str, params: dict[str, object]) -> None:
    res = parse_infotext(format_infotext(prompt, negative, params))
    assert res["Prompt"] == prompt
    assert res["Negative prompt"] == negative
    for key, value in params.items():
        if key == "Size":
            w, h = str(value).split("x")
            assert (res["Size-1"], res["Size-2"]) == (w, h)
        else:
            assert res[key] == format_value(value), key


@pytest.mark.parametrize(
    ("prompt", "emphasis"),
    [
        ("a cat", False),
        ("(a cat)", True),
        ("[a cat]", True),
        ("((a)) b", True),
        ("(a cat:1.0)", False),
        ("(a cat:1.3)", True),
        ("(a:1.1) [b]", True),
        (r"\(not emphasis\)", False),
        ("unbalanced (open", True),
        ("stray ) close ]", False),
        ("()", False),
        ("a BREAK b", False),
        ("(a BREAK b)", True),
        ("time: 10:30", False),
        ("<lora:x:0.5>", False),
    ],
)
def test_uses_emphasis(prompt: str, emphasis: bool) -> None:
    assert uses_emphasis(prompt) is emphasis


def test_emphasis_default_looks_at_negative_prompt_too() -> None:
    res = parse_infotext("cat\nNegative prompt: (ugly)\nSteps: 1, Seed: 1, Sampler: Euler")
    assert res["Emphasis"] == "Original"
