"""The operator's prompt blocklist (``--content-blocklist FILE``): words, phrases and regexes a
prompt may not contain.

One entry a line, in UTF-8:

    # a comment (a line whose first non-blank character is #), and blank lines, are skipped
    forbidden word            a word or phrase: case-insensitive, whole words only ("art" does not
                              match "party"; "bad thing" matches "Bad   Thing" and "(bad thing:1.2)")
    /forbid(den|s)?\\s+\\w+/  a regex between slashes: case-insensitive, matched anywhere

Every prompt is NFKC-normalised and case-folded before matching, so full-width or ligature letters
do not slip past an entry. Python's ``re`` cannot be stopped once it runs, so a regex that can
backtrack catastrophically (a repeat inside a repeat, ``(a+)+``, or a backreference) is refused
when the file loads, and the text it runs on is bounded by ``max_prompt_bytes``. A file that does
not load raises ``BlocklistError`` naming the file and line: the server does not start.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Any

try:  # Python >= 3.11 keeps the parser here; older ones expose it as sre_parse
    from re import _parser as _sre_parse  # type: ignore[attr-defined]
except ImportError:  # pragma: no cover
    import sre_parse as _sre_parse  # type: ignore[no-redef]

# A letter or digit: a word boundary is any other character, "_" included ("bad_word" is two words,
# as booru-style prompts write them).
_ALNUM = r"[^\W_]"
_MAX_ENTRY_CHARS = 1000


class BlocklistError(ValueError):
    """A blocklist file that cannot be used; ``str()`` is one line: ``file:line: reason``."""


@dataclass(frozen=True)
class Blocklist:
    """The compiled entries: one alternation of the words, and the regexes."""

    words: re.Pattern[str] | None = None
    regexes: tuple[re.Pattern[str], ...] = ()
    source: str = ""  # the file it came from, for logs

    @property
    def empty(self) -> bool:
        return self.words is None and not self.regexes

    def blocks(self, text: str) -> bool:
        """Whether ``text`` holds a blocked word or matches a blocked regex (never says which)."""
        if not text or self.empty:
            return False
        folded = normalize(text)
        if self.words is not None and self.words.search(folded):
            return True
        return any(pattern.search(folded) for pattern in self.regexes)


def normalize(text: str) -> str:
    return unicodedata.normalize("NFKC", text).casefold()


def parse_blocklist(text: str, *, source: str = "<blocklist>") -> Blocklist:
    """The blocklist ``text`` holds; ``BlocklistError`` for the first line that cannot be used."""
    words: list[str] = []
    regexes: list[re.Pattern[str]] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        where = f"{source}:{number}"
        if len(line) > _MAX_ENTRY_CHARS:
            raise BlocklistError(f"{where}: an entry is at most {_MAX_ENTRY_CHARS} characters")
        if len(line) >= 2 and line.startswith("/") and line.endswith("/"):
            regexes.append(_compile_regex(line[1:-1], where))
        else:
            words.append(_word_pattern(normalize(line)))
    alternation = re.compile("|".join(words)) if words else None
    return Blocklist(words=alternation, regexes=tuple(regexes), source=source)


def load_blocklist(path: Path) -> Blocklist:
    """``path``'s blocklist; ``BlocklistError`` (one line naming the file) when it cannot be read."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise BlocklistError(f"{path}: content blocklist file not found") from None
    except UnicodeDecodeError as exc:
        raise BlocklistError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise BlocklistError(f"{path}: cannot read the content blocklist ({exc.strerror or exc})") from None
    return parse_blocklist(text, source=str(path))


def _word_pattern(phrase: str) -> str:
    """A phrase as a whole-word pattern: its words in order, any whitespace between them."""
    body = r"\s+".join(re.escape(word) for word in phrase.split())
    return rf"(?<!{_ALNUM}){body}(?!{_ALNUM})"


def _compile_regex(pattern: str, where: str) -> re.Pattern[str]:
    if not pattern:
        raise BlocklistError(f"{where}: an empty regex (//) would block every prompt")
    try:
        parsed = _sre_parse.parse(pattern, re.IGNORECASE)
        compiled = re.compile(pattern, re.IGNORECASE)
    except re.error as exc:
        raise BlocklistError(f"{where}: invalid regex /{pattern}/: {exc}") from None
    problem = _backtracking_problem(parsed)
    if problem is not None:
        raise BlocklistError(f"{where}: regex /{pattern}/ refused: {problem}")
    if compiled.search("") is not None:
        raise BlocklistError(f"{where}: regex /{pattern}/ matches the empty text, so every prompt")
    return compiled


_REPEATS = ("MAX_REPEAT", "MIN_REPEAT", "POSSESSIVE_REPEAT")


def _backtracking_problem(parsed: Any, inside_repeat: bool = False) -> str | None:
    """Why a parsed pattern could run for exponential time, or None: a backreference, or an
    unbounded repeat nested in another repeat (``(a+)+``, ``(a*b?)*``, ``(x+|y)+``)."""
    for op, arg in parsed:
        name = str(op)
        if name in ("GROUPREF", "GROUPREF_EXISTS"):
            return "backreferences are not allowed"
        if name in _REPEATS:
            _low, high, body = arg
            backtracks = high > 1 and name != "POSSESSIVE_REPEAT"  # MAXREPEAT (unbounded) included
            if backtracks and inside_repeat:
                return "a repeat inside a repeat can take exponential time ((a+)+ style)"
            found = _backtracking_problem(body, inside_repeat or backtracks)
            if found:
                return found
        elif name == "SUBPATTERN":
            found = _backtracking_problem(arg[-1], inside_repeat)
            if found:
                return found
        elif name == "BRANCH":
            for branch in arg[1]:
                found = _backtracking_problem(branch, inside_repeat)
                if found:
                    return found
        elif name in ("ASSERT", "ASSERT_NOT"):
            found = _backtracking_problem(arg[1], inside_repeat)
            if found:
                return found
        elif name == "ATOMIC_GROUP":
            found = _backtracking_problem(arg, inside_repeat)
            if found:
                return found
    return None
