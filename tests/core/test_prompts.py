"""A1111's prompt language, construct by construct, malformed prompts included."""

from __future__ import annotations

import pytest

from sdgate.core.prompts import (
    BREAK,
    ExtraNetwork,
    extract_networks,
    parse_attention,
    parse_prompt,
    prompt_schedule,
    split_and,
    text_at_step,
)

R, S = 1.1, 1 / 1.1


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", [("", 1.0)]),
        ("a cat", [("a cat", 1.0)]),
        ("(cat)", [("cat", R)]),
        ("((cat))", [("cat", R * R)]),
        ("(((cat)))", [("cat", R * R * R)]),
        ("(cat:1.3)", [("cat", 1.3)]),
        ("(cat: 1.3 )", [("cat", 1.3)]),
        ("(cat:-0.5)", [("cat", -0.5)]),
        ("(cat:.5)", [("cat", 0.5)]),
        ("[cat]", [("cat", S)]),
        ("[[cat]]", [("cat", S * S)]),
        ("a (b:1.5) c", [("a ", 1.0), ("b", 1.5), (" c", 1.0)]),
        ("((a) b:2)", [("a", 2 * R), (" b", 2.0)]),
        ("([a]:1.5)", [("a", 1.5 * S)]),
        (r"\(cat\)", [("(cat)", 1.0)]),
        (r"\[cat\]", [("[cat]", 1.0)]),
        (r"a \\ b", [("a \\ b", 1.0)]),
        ("a \\b", [("a b", 1.0)]),  # a lone backslash is dropped
        (r"(a \(b\))", [("a (b)", R)]),
        ("a BREAK b", [("a", 1.0), (BREAK, -1.0), ("b", 1.0)]),
        ("aBREAKb", [("aBREAKb", 1.0)]),  # only the whole word
        ("(a BREAK b)", [("a", R), (BREAK, -1.0), ("b", R)]),
        ("cat:1.2", [("cat:1.2", 1.0)]),  # a weight outside brackets is text
        # malformed
        ("(cat", [("cat", R)]),  # unclosed: up to the end
        ("[cat", [("cat", S)]),
        ("cat)", [("cat)", 1.0)]),  # stray closers are literal
        ("cat]", [("cat]", 1.0)]),
        ("(cat:1.2.3)", [("cat:1.2.3)", R)]),  # not a number: literal, the "(" stays open
        ("(cat:abc)", [("cat:abc", R)]),
        ("))((", [("))", 1.0)]),
        ("(:1.5)", [("", 1.0)]),
    ],
)
def test_attention(text: str, expected: list[tuple[str, float]]) -> None:
    got = parse_attention(text)
    assert [t for t, _ in got] == [t for t, _ in expected]
    assert [w for _, w in got] == pytest.approx([w for _, w in expected])


@pytest.mark.parametrize(
    ("prompt", "steps", "expected"),
    [
        ("a cat", 10, [(10, "a cat")]),
        ("a [dog:cat:5]", 10, [(5, "a dog"), (10, "a cat")]),
        ("a [dog:cat:0.5]", 10, [(5, "a dog"), (10, "a cat")]),
        ("a [cat:5]", 10, [(5, "a "), (10, "a cat")]),
        ("a [cat::5]", 10, [(5, "a cat"), (10, "a ")]),
        ("a [dog:cat: 3 ]", 10, [(3, "a dog"), (10, "a cat")]),
        ("a [dog:cat:50]", 10, [(10, "a dog")]),  # clamped to steps
        ("a [dog:cat:0]", 10, [(10, "a cat")]),
        ("a [dog:cat:-1]", 10, [(10, "a cat")]),
        ("[a|b]", 3, [(1, "a"), (2, "b"), (3, "a")]),
        ("[a|b|c]", 4, [(1, "a"), (2, "b"), (3, "c"), (4, "a")]),
        ("[fe|]male", 2, [(1, "female"), (2, "male")]),
        ("a[b:[c:d:2]:1]e", 4, [(1, "abe"), (2, "ace"), (4, "ade")]),
        ("(a [b:c:2]:1.2)", 4, [(2, "(a b:1.2)"), (4, "(a c:1.2)")]),  # emphasis passes through
        ("[(a:1.2):b:2]", 4, [(2, "(a:1.2)"), (4, "b")]),
        ("[cat]", 4, [(4, "[cat]")]),  # emphasis, not scheduling
        (r"\[a:b:2\]", 4, [(4, r"\[a:b:2\]")]),  # escaped: literal
        # malformed: kept literally, never an error
        ("a [dog:cat", 4, [(4, "a [dog:cat")]),
        ("a [dog:cat:x]", 4, [(4, "a [dog:cat:x]")]),
        ("a [b:c:d:2]", 4, [(4, "a [b:c:d:2]")]),
        ("a ] [ :", 4, [(4, "a ] [ :")]),
        ("[a|b:2]", 4, [(4, "[a|b:2]")]),
        ("[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[x", 4, [(4, "[" * 39 + "x")]),
        ("[a:b:1e999]", 4, [(4, "[a:b:1e999]")]),
    ],
)
def test_schedule(prompt: str, steps: int, expected: list[tuple[int, str]]) -> None:
    assert prompt_schedule(prompt, steps) == expected


def test_hires_timeline() -> None:
    # Whole numbers count from the start of the base pass; 1.x is a fraction of the hires steps.
    assert prompt_schedule("[a:b:15]", 10, hires_of=10) == [(5, "a"), (10, "b")]
    assert prompt_schedule("[a:b:1.3]", 10, hires_of=20) == [(3, "a"), (10, "b")]


def test_text_at_step_uses_a1111s_boundaries() -> None:
    schedule = prompt_schedule("[a:b:2]", 4)
    assert [text_at_step(schedule, i) for i in range(4)] == ["a", "a", "a", "b"]


@pytest.mark.parametrize(
    ("prompt", "expected"),
    [
        ("a cat", [("a cat", 1.0)]),
        ("a cat AND a dog", [("a cat", 1.0), (" a dog", 1.0)]),
        ("a cat :1.2 AND a dog :0.5", [("a cat", 1.2), (" a dog", 0.5)]),
        ("a cat:-1 AND", [("a cat", -1.0), ("", 1.0)]),
        ("BRAND AND ANDROID", [("BRAND", 1.0), (" ANDROID", 1.0)]),
        ("cats and dogs", [("cats and dogs", 1.0)]),  # lowercase is text
    ],
)
def test_and(prompt: str, expected: list[tuple[str, float]]) -> None:
    assert split_and(prompt) == expected


@pytest.mark.parametrize(
    ("prompt", "text", "networks"),
    [
        ("a <lora:wc:0.7> cat", "a  cat", [ExtraNetwork("lora", ("wc", "0.7"))]),
        ("<lora:wc>", "", [ExtraNetwork("lora", ("wc",))]),
        ("<lora:wc:0.5:1.0>x", "x", [ExtraNetwork("lora", ("wc", "0.5", "1.0"))]),
        ("<lyco:a:te=0.5:unet=1>", "", [ExtraNetwork("lyco", ("a",), {"te": "0.5", "unet": "1"})]),
        (
            "<hypernet:h:1><lora:a:1>",
            "",
            [ExtraNetwork("hypernet", ("h", "1")), ExtraNetwork("lora", ("a", "1"))],
        ),
        ("a <lora> b <:x> c", "a <lora> b <:x> c", []),  # not tags
    ],
)
def test_extra_networks(prompt: str, text: str, networks: list[ExtraNetwork]) -> None:
    assert extract_networks(prompt) == (text, networks)


def test_the_whole_pipeline() -> None:
    parsed = parse_prompt("<lora:wc:0.7>a [red:blue:2] cat AND a dog:0.5", 4)
    assert [n.name for n in parsed.networks] == ["wc"]
    assert parsed.parts == [([(2, "a red cat"), (4, "a blue cat")], 1.0), ([(4, " a dog")], 0.5)]
    assert parsed.switch_steps == [2, 4]


@pytest.mark.parametrize(
    "prompt", ["(", ")", "[", "]", ":", "|", "\\", "<", "[:]", "[|]", "[::]", "((((", "[a:b:]"]
)
def test_anything_parses(prompt: str) -> None:
    parse_prompt(prompt, 5)
    parse_attention(prompt)
