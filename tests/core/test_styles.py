"""styles.csv as A1111 reads and applies it."""

from __future__ import annotations

from pathlib import Path

import pytest

from sdgate.core.styles import PromptStyle, apply_styles, load_styles, merge_prompt


@pytest.mark.parametrize(
    ("style", "prompt", "expected"),
    [
        ("{prompt}, ink drawing", "a cat", "a cat, ink drawing"),
        ("masterpiece, {prompt}", "a cat", "masterpiece, a cat"),
        ("sharp focus", "a cat", "a cat, sharp focus"),
        ("sharp focus", "", "sharp focus"),
        ("", "a cat ", "a cat"),
        ("{prompt}", "", ""),
    ],
)
def test_merge(style: str, prompt: str, expected: str) -> None:
    assert merge_prompt(style, prompt) == expected


def test_load_and_apply(tmp_path: Path) -> None:
    path = tmp_path / "styles.csv"
    path.write_text(
        "\ufeffname,prompt,negative_prompt,extra\n"
        '"ink","{prompt}, ink, ""quoted""",blurry,x\n'
        ",nameless,\n"
        "bare,b\n"
    )
    styles = load_styles(path)
    assert styles == {
        "ink": PromptStyle("ink", '{prompt}, ink, "quoted"', "blurry"),
        "bare": PromptStyle("bare", "b", ""),
    }
    assert apply_styles("cat", "ugly", ["ink", "missing", "bare"], styles) == (
        'cat, ink, "quoted", b',
        "ugly, blurry",
    )
    assert load_styles(tmp_path / "none.csv") == {}
