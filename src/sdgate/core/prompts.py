"""A1111's prompt language, parsed without torch: extra networks, AND, scheduling, emphasis.

The order is A1111's (``modules/prompt_parser.py``): extra-network tags are taken out, the prompt
is split on ``AND``, each part is expanded per step by the scheduling grammar (``[from:to:when]``,
``[a|b]``), and each resulting text is split into weighted runs by the attention grammar
(``(x)``, ``(x:1.3)``, ``[x]``, ``BREAK``). Every function here accepts any string and never
raises: a construct that does not parse is kept as literal text, as A1111 does.

The scheduling parser is recursive descent over the characters; emphasis brackets pass through it
verbatim (they are the attention parser's business), so ``(a [b:c:5])`` still switches at step 5.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

BREAK = "BREAK"
ROUND_MULTIPLIER = 1.1
SQUARE_MULTIPLIER = 1 / 1.1

# --- extra networks: <type:args> -------------------------------------------------------------------

_EXTRA_NETWORK = re.compile(r"<(\w+):([^>]+)>")


@dataclass(frozen=True)
class ExtraNetwork:
    """One ``<kind:arg:arg:key=value>`` tag: positional args and named args, as strings."""

    kind: str
    positional: tuple[str, ...]
    named: dict[str, str] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.positional[0] if self.positional else ""


def extract_networks(prompt: str) -> tuple[str, list[ExtraNetwork]]:
    """The prompt with every ``<kind:args>`` tag removed, and the tags in order."""
    networks: list[ExtraNetwork] = []

    def take(match: re.Match[str]) -> str:
        positional, named = [], {}
        for arg in match.group(2).split(":"):
            key, sep, value = arg.partition("=")
            if sep:
                named[key.strip()] = value.strip()
            else:
                positional.append(arg.strip())
        networks.append(ExtraNetwork(match.group(1).lower(), tuple(positional), named))
        return ""

    return _EXTRA_NETWORK.sub(take, prompt), networks


# --- AND (composable diffusion) -----------------------------------------------------------------

_AND = re.compile(r"\bAND\b")
_AND_WEIGHT = re.compile(r"^((?:\s|.)*?)(?:\s*:\s*([-+]?(?:\d+\.?|\d*\.\d+)))?\s*$")


def split_and(prompt: str) -> list[tuple[str, float]]:
    """``a cat :1.2 AND a dog`` -> ``[("a cat", 1.2), (" a dog", 1.0)]`` (A1111 keeps inner spaces)."""
    parts: list[tuple[str, float]] = []
    for sub in _AND.split(prompt):
        match = _AND_WEIGHT.search(sub)
        if match is None:  # pragma: no cover - the pattern matches any string
            parts.append((sub, 1.0))
            continue
        text, weight = match.groups()
        parts.append((text, float(weight) if weight is not None else 1.0))
    return parts


# --- scheduling: [from:to:when] and [a|b] ----------------------------------------------------------

_NUMBER = re.compile(r"\s*([+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)\s*")


@dataclass(frozen=True)
class _Scheduled:
    before: list[_Node]
    after: list[_Node]
    when: str  # the number as written: "." in it makes it a fraction


@dataclass(frozen=True)
class _Alternate:
    options: list[list[_Node]]


_Node = str | _Scheduled | _Alternate


class _ScheduleParser:
    """Recursive descent over ``prompt``; a bracket that is not a construct is literal text."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0
        # A bracket's reading depends only on where it starts: remembering it keeps a run of
        # unclosed "[" linear instead of exponential.
        self._brackets: dict[int, tuple[list[_Node], int]] = {}

    def sequence(self, stops: str) -> list[_Node]:
        nodes: list[_Node] = []
        while self.pos < len(self.text):
            char = self.text[self.pos]
            if char in stops:
                break
            if char == "\\":  # kept verbatim: the attention parser reads escapes
                nodes.append(self.text[self.pos : self.pos + 2])
                self.pos += 2
            elif char == "[":
                nodes.extend(self.bracket())
            elif char == "(":
                nodes.extend(self.round())
            else:
                nodes.append(char)
                self.pos += 1
        return nodes

    def round(self) -> list[_Node]:
        """``( ... )`` passes through, but ``:`` and ``|`` inside it are not a bracket's separators."""
        self.pos += 1
        inner: list[_Node] = ["(", *self.sequence(")]")]
        if self.pos < len(self.text) and self.text[self.pos] == ")":
            inner.append(")")
            self.pos += 1
        return inner

    def bracket(self) -> list[_Node]:
        start = self.pos
        if start not in self._brackets:
            nodes = self._read_bracket()
            self._brackets[start] = (nodes, self.pos)
        nodes, self.pos = self._brackets[start]
        return nodes

    def _read_bracket(self) -> list[_Node]:
        start = self.pos
        self.pos += 1
        parts: list[list[_Node]] = []
        separators: list[str] = []
        while True:
            parts.append(self.sequence("]:|"))
            if self.pos >= len(self.text):
                break
            char = self.text[self.pos]
            self.pos += 1
            if char == "]":
                node = _construct(parts, separators)
                if node is not None:
                    return node
                break
            separators.append(char)
        # Not a construct: the "[" is literal and what follows is read again at this level.
        self.pos = start + 1
        return ["["]


def _construct(parts: list[list[_Node]], separators: list[str]) -> list[_Node] | None:
    if not separators:
        return ["[", *parts[0], "]"]  # emphasis: the attention parser's business
    if all(s == "|" for s in separators):
        return [_Alternate(parts)]
    if all(s == ":" for s in separators) and len(parts) in (2, 3):
        when = parts[-1]
        if all(isinstance(n, str) for n in when):
            number = _NUMBER.fullmatch("".join(n for n in when if isinstance(n, str)))
            if number is not None:
                before = parts[0] if len(parts) == 3 else []
                return [_Scheduled(before, parts[-2], number.group(1))]
    return None


def _parse_schedule(prompt: str) -> list[_Node]:
    parser = _ScheduleParser(prompt)
    nodes: list[_Node] = []
    while parser.pos < len(prompt):
        nodes.extend(parser.sequence(""))
        if parser.pos < len(prompt):  # pragma: no cover - an empty stop set reads to the end
            break
    return nodes


def _switch_step(when: str, steps: int, *, int_offset: int, frac_offset: float) -> int:
    value = float(when)
    value = (value - frac_offset) * steps if "." in when else value - int_offset
    return min(steps, int(value))


def _collect_steps(
    nodes: list[_Node], steps: int, int_offset: int, frac_offset: float, into: set[int]
) -> None:
    for node in nodes:
        if isinstance(node, _Scheduled):
            step = _switch_step(node.when, steps, int_offset=int_offset, frac_offset=frac_offset)
            if step >= 1:
                into.add(step)
            _collect_steps(node.before, steps, int_offset, frac_offset, into)
            _collect_steps(node.after, steps, int_offset, frac_offset, into)
        elif isinstance(node, _Alternate):
            into.update(range(1, steps + 1))
            for option in node.options:
                _collect_steps(option, steps, int_offset, frac_offset, into)


def _text_at(nodes: list[_Node], step: int, steps: int, int_offset: int, frac_offset: float) -> str:
    out: list[str] = []
    for node in nodes:
        if isinstance(node, str):
            out.append(node)
        elif isinstance(node, _Scheduled):
            switch = _switch_step(node.when, steps, int_offset=int_offset, frac_offset=frac_offset)
            chosen = node.before if step <= switch else node.after
            out.append(_text_at(chosen, step, steps, int_offset, frac_offset))
        else:
            option = node.options[(step - 1) % len(node.options)]
            out.append(_text_at(option, step, steps, int_offset, frac_offset))
    return "".join(out)


def prompt_schedule(prompt: str, steps: int, *, hires_of: int | None = None) -> list[tuple[int, str]]:
    """``[(last_step, text), ...]``: the text to use up to and including each step (1-based).

    ``hires_of=base_steps`` reads ``when`` for a hires pass of ``steps`` steps: whole numbers count
    from the start of the base pass, ``1.x`` is the fraction x of the hires steps (A1111's new
    timeline).
    """
    steps = max(1, steps)
    int_offset, frac_offset = (hires_of, 1.0) if hires_of is not None else (0, 0.0)
    try:
        nodes = _parse_schedule(prompt)
    except (RecursionError, ValueError, OverflowError):
        return [(steps, prompt)]
    switches = {steps}
    try:
        _collect_steps(nodes, steps, int_offset, frac_offset, switches)
    except (ValueError, OverflowError):  # an absurd number such as 1e999
        return [(steps, prompt)]
    return [(step, _text_at(nodes, step, steps, int_offset, frac_offset)) for step in sorted(switches)]


def text_at_step(schedule: list[tuple[int, str]], step_index: int) -> str:
    """The text for 0-based sampler step ``step_index``: the first entry whose last step is >= it
    (A1111's ``reconstruct_cond_batch``, off-by-one included)."""
    for last_step, text in schedule:
        if step_index <= last_step:
            return text
    return schedule[-1][1]


# --- attention: (x), (x:1.3), [x], escapes, BREAK ----------------------------------------------------

_ATTENTION_TOKEN = re.compile(
    r"\\\(|\\\)|\\\[|\\\]|\\\\|\\|\(|\[|:\s*([+-]?[.\d]+)\s*\)|\)|\]|[^\\()\[\]:]+|:"
)
_BREAK = re.compile(r"\s*\bBREAK\b\s*", re.S)


def parse_attention(text: str) -> list[tuple[str, float]]:
    """``a (b:1.5) [c]`` -> ``[("a ", 1.0), ("b", 1.5), (" ", 1.0), ("c", 0.909...)]``.

    A ``BREAK`` becomes ``("BREAK", -1.0)``. Unclosed brackets weigh up to the end; stray closers
    are literal; runs of equal weight are merged. The result is never empty.
    """
    runs: list[list[object]] = []
    round_open: list[int] = []
    square_open: list[int] = []

    def multiply(start: int, by: float) -> None:
        for run in runs[start:]:
            if run[1] != -1.0 or run[0] != BREAK:  # a BREAK inside brackets stays a BREAK
                run[1] = float(run[1]) * by  # type: ignore[arg-type]

    for match in _ATTENTION_TOKEN.finditer(text):
        token, weight = match.group(0), match.group(1)
        number = _float_or_none(weight) if weight is not None else None
        if token.startswith("\\"):
            runs.append([token[1:], 1.0])
        elif token == "(":
            round_open.append(len(runs))
        elif token == "[":
            square_open.append(len(runs))
        elif number is not None and round_open:
            multiply(round_open.pop(), number)
        elif token == ")" and round_open:
            multiply(round_open.pop(), ROUND_MULTIPLIER)
        elif token == "]" and square_open:
            multiply(square_open.pop(), SQUARE_MULTIPLIER)
        else:
            for i, part in enumerate(_BREAK.split(token)):
                if i > 0:
                    runs.append([BREAK, -1.0])
                runs.append([part, 1.0])
    for start in round_open:
        multiply(start, ROUND_MULTIPLIER)
    for start in square_open:
        multiply(start, SQUARE_MULTIPLIER)
    merged: list[tuple[str, float]] = []
    for run_text, run_weight in runs:
        text_part, weight_value = str(run_text), float(run_weight)  # type: ignore[arg-type]
        if merged and merged[-1][1] == weight_value:
            merged[-1] = (merged[-1][0] + text_part, weight_value)
        else:
            merged.append((text_part, weight_value))
    return merged or [("", 1.0)]


def _float_or_none(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


# --- the whole pipeline of one prompt ------------------------------------------------------------


@dataclass(frozen=True)
class ParsedPrompt:
    """One prompt after A1111's steps 2-4: its networks and, per AND part, its schedule."""

    networks: list[ExtraNetwork]
    parts: list[tuple[list[tuple[int, str]], float]]  # (schedule, AND weight)

    @property
    def switch_steps(self) -> list[int]:
        return sorted({step for schedule, _ in self.parts for step, _ in schedule})


def parse_prompt(prompt: str, steps: int, *, hires_of: int | None = None) -> ParsedPrompt:
    text, networks = extract_networks(prompt)
    parts = [(prompt_schedule(sub, steps, hires_of=hires_of), weight) for sub, weight in split_and(text)]
    return ParsedPrompt(networks, parts)
