"""The prompt blocklist file: words and phrases (whole words, any case), /regexes/, comments, and
the one-line errors that stop a server from starting."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from sdgate.core.blocklist import Blocklist, BlocklistError, load_blocklist, parse_blocklist

FILE = """\
# blocked words
forbidden
Bad Thing
  c++

/secret\\s*code\\d+/
"""


@pytest.fixture
def blocklist() -> Blocklist:
    return parse_blocklist(FILE, source="blocked.txt")


@pytest.mark.parametrize(
    "prompt",
    [
        "a forbidden fruit",
        "FORBIDDEN",
        "(forbidden:1.3), landscape",
        "forbidden_fruit",  # booru-style tags: "_" separates words
        "ｆｏｒｂｉｄｄｅｎ",  # full-width letters are normalised first
        "a bad thing happened",
        "a BAD\n\tTHING",
        "learn c++ today",
        "the SecretCode42 here",
        "secret code7",
    ],
)
def test_blocked(blocklist: Blocklist, prompt: str) -> None:
    assert blocklist.blocks(prompt)


@pytest.mark.parametrize(
    "prompt",
    [
        "",
        "a castle",
        "unforbidden",  # whole words only
        "forbiddenness",
        "bad things",  # a phrase is whole words too
        "a bad day, a thing",
        "c+",
        "secret code",  # the regex wants digits
        "# blocked words",  # comments are not entries
    ],
)
def test_allowed(blocklist: Blocklist, prompt: str) -> None:
    assert not blocklist.blocks(prompt)


def test_empty_file_blocks_nothing() -> None:
    empty = parse_blocklist("# nothing yet\n\n")
    assert empty.empty
    assert not empty.blocks("anything at all")


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("/[unclosed/", "invalid regex"),
        ("/(a+)+$/", "repeat inside a repeat"),
        ("/(?:\\w+\\s?)*end/", "repeat inside a repeat"),
        ("/(a)\\1/", "backreferences"),
        ("//", "empty regex"),
        ("/x*/", "matches the empty text"),
        ("x" * 1001, "at most"),
    ],
)
def test_bad_lines_name_file_and_line(line: str, reason: str) -> None:
    with pytest.raises(BlocklistError) as caught:
        parse_blocklist(f"# header\nfine\n{line}\n", source="blocked.txt")
    message = str(caught.value)
    assert message.startswith("blocked.txt:3: ")
    assert reason in message
    assert "\n" not in message


def test_load_reads_the_file(tmp_path: Path) -> None:
    path = tmp_path / "blocked.txt"
    path.write_text("\ufeff" + FILE, encoding="utf-8")  # a BOM from a Windows editor is fine
    loaded = load_blocklist(path)
    assert loaded.blocks("forbidden") and not loaded.blocks("fine")
    assert loaded.source == str(path)


def test_load_errors_are_one_line(tmp_path: Path) -> None:
    with pytest.raises(BlocklistError, match="not found"):
        load_blocklist(tmp_path / "missing.txt")
    latin = tmp_path / "latin1.txt"
    latin.write_bytes(b"caf\xe9\n")
    with pytest.raises(BlocklistError, match="not UTF-8"):
        load_blocklist(latin)


def test_long_prompt_is_fast(blocklist: Blocklist) -> None:
    """A prompt at the size limit (64 KiB) against the entries: no backtracking blow-up."""
    prompt = ("a " * 32 * 1024) + "!"
    started = time.perf_counter()
    assert not blocklist.blocks(prompt)
    assert time.perf_counter() - started < 1.0
