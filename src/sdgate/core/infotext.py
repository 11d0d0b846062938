"""A1111's infotext: the "parameters" text stored in every image, written and read back.

``format_infotext`` mirrors ``processing.create_infotext`` and ``parse_infotext`` mirrors
``infotext_utils.parse_generation_parameters`` at v1.10.1 (``reference/a1111_api.md`` §4).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping

A1111_VERSION = "v1.10.1"

# create_infotext's fixed positions. A key the caller passes in another order still lands here.
FIXED_KEYS: tuple[str, ...] = (
    "Steps",
    "Sampler",
    "Schedule type",
    "CFG scale",
    "Image CFG scale",
    "Seed",
    "Face restoration",
    "Size",
    "Model hash",
    "Model",
    "FP8 weight",
    "Cache FP16 weight for LoRA",
    "VAE hash",
    "VAE",
    "Variation seed",
    "Variation seed strength",
    "Seed resize from",
    "Denoising strength",
    "Conditional mask weight",
    "Clip skip",
    "ENSD",
    "Token merging ratio",
    "Token merging ratio hr",
    "Init image hash",
    "RNG",
    "Tiling",
)
TRAILING_KEYS: tuple[str, ...] = ("Version", "User")

# A1111's key pattern with the key's length bounded: its ``\w[\w \-/]+`` backtracks over the whole
# line at every start position when no ":" follows (60 KB of "a a a ..." took 30 s); no key is
# anywhere near 64 characters long.
RE_PARAM = re.compile(r'\s*(\w[\w \-/]{1,63}):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
RE_IMAGE_SIZE = re.compile(r"^(\d+)x(\d+)$")
NEGATIVE_PROMPT_PREFIX = "Negative prompt:"

# What parse_generation_parameters adds when a key is missing (after the params line is read).
PARSER_DEFAULTS: tuple[tuple[str, object], ...] = (
    ("Clip skip", "1"),
    ("Hires resize-1", 0),  # and "Hires resize-2": 0 with it
    ("Hires sampler", "Use same sampler"),
    ("Hires schedule type", "Use same scheduler"),
    ("Hires checkpoint", "Use same checkpoint"),
    ("Hires prompt", ""),
    ("Hires negative prompt", ""),
    ("Mask mode", "Inpaint masked"),
    ("Masked content", "original"),
    ("Inpaint area", "Whole picture"),
    ("Masked area padding", 32),
    ("RNG", "GPU"),
    ("Schedule type", "Automatic"),
    ("Schedule max sigma", 0),
    ("Schedule min sigma", 0),
    ("Schedule rho", 0),
    ("VAE Encoder", "Full"),
    ("VAE Decoder", "Full"),
    ("FP8 weight", "Disable"),
)


def format_infotext(prompt: str, negative_prompt: str, params: Mapping[str, object]) -> str:
    """The text A1111 stores as the PNG "parameters" chunk.

    ``params`` holds display values keyed by infotext name (``{"Steps": 20, "Sampler": "DPM++ 2M",
    "Schedule type": "Karras", "CFG scale": 7.0, ...}``). The caller decides what appears, as
    create_infotext does (e.g. "Clip skip" only when > 1); ``None`` values are left out. Keys come
    out in A1111's order: the fixed keys, then the others as given, then ``Version`` and ``User``.
    """
    parts = []
    for key in _ordered_keys(params):
        value = params[key]
        if value is None:
            continue
        text = format_value(value)
        parts.append(key if text == key else f"{key}: {quote(text)}")
    negative = f"\n{NEGATIVE_PROMPT_PREFIX} {negative_prompt}" if negative_prompt else ""
    return f"{prompt}{negative}\n{', '.join(parts)}".strip()


def format_value(value: object) -> str:
    """A value as A1111 shows it: integral floats without ".0" (CFG scale 7), others as Python does."""
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return str(int(value))
    return str(value)


def quote(text: str) -> str:
    """JSON-quote a value the params line could not hold as is.

    A1111 quotes values containing ``,``, ``:`` or a newline. We also quote a value that starts with
    a double quote, which A1111 writes bare and then reads back unquoted (a lossy round trip).
    """
    if "," in text or ":" in text or "\n" in text or text.startswith('"'):
        return json.dumps(text, ensure_ascii=False)
    return text


def unquote(text: str) -> str:
    if len(text) < 2 or text[0] != '"' or text[-1] != '"':
        return text
    try:
        value = json.loads(text)
    except ValueError:
        return text
    return value if isinstance(value, str) else text


def parse_infotext(text: str) -> dict[str, object]:
    """A1111's ``parse_generation_parameters``: the dict ``/png-info`` returns as ``parameters``.

    Values stay strings (``"Steps": "20"``), ``WxH`` values split into ``Key-1``/``Key-2``, quoted
    values are unquoted, and the parser's defaults (``PARSER_DEFAULTS``) fill missing keys. Not
    reproduced: style extraction (needs the styles file), old hires-fix "First pass size"
    conversion and the Version-driven back-compat switches; the keys they would add are all
    optional for a reader.
    """
    *lines, last_line = text.replace("\r\n", "\n").strip().split("\n")
    if len(RE_PARAM.findall(last_line)) < 3:
        lines.append(last_line)
        last_line = ""

    prompt_lines: list[str] = []
    negative_lines: list[str] = []
    in_negative = False
    for raw in lines:
        line = raw.strip()
        if line.startswith(NEGATIVE_PROMPT_PREFIX):
            in_negative = True
            line = line[len(NEGATIVE_PROMPT_PREFIX) :].strip()
        # A1111 joins with "\n" but skips the separator while the text so far is empty.
        target = negative_lines if in_negative else prompt_lines
        if target or line:
            target.append(line)
    prompt = "\n".join(prompt_lines)
    negative_prompt = "\n".join(negative_lines)

    res: dict[str, object] = {"Prompt": prompt, "Negative prompt": negative_prompt}
    for key, raw_value in RE_PARAM.findall(last_line):
        if not raw_value:
            continue  # A1111 fails on v[0] for an empty value and drops the key
        value = unquote(raw_value) if raw_value[0] == raw_value[-1] == '"' else raw_value
        size = RE_IMAGE_SIZE.match(value)
        if size:
            res[f"{key}-1"], res[f"{key}-2"] = size.group(1), size.group(2)
        else:
            res[key] = value

    hypernet = res.get("Hypernet")
    if hypernet is not None:
        res["Prompt"] = f"{res['Prompt']}<hypernet:{hypernet}:{res.get('Hypernet strength', '1.0')}>"

    for key, default in PARSER_DEFAULTS:
        if key not in res:
            res[key] = default
            if key == "Hires resize-1":
                res["Hires resize-2"] = 0
    if "Cache FP16 weight for LoRA" not in res and res["FP8 weight"] != "Disable":
        res["Cache FP16 weight for LoRA"] = False
    if "Emphasis" not in res and (uses_emphasis(prompt) or uses_emphasis(negative_prompt)):
        res["Emphasis"] = "Original"
    if "Refiner switch by sampling steps" not in res:
        res["Refiner switch by sampling steps"] = False
    return res


# prompt_parser.re_attention, in its alternation order.
_RE_ATTENTION = re.compile(r"\\\(|\\\)|\\\[|\\]|\\\\|\\|\(|\[|:\s*([+-]?[.\d]+)\s*\)|\)|]|[^\\()\[\]:]+|:")
_RE_BREAK = re.compile(r"\s*\bBREAK\b\s*", re.S)


def uses_emphasis(prompt: str) -> bool:
    """Whether A1111's ``parse_prompt_attention`` gives any text a weight other than 1.0.

    Only the weights are tracked; the text itself does not matter here.
    """
    weights: list[float] = []  # one per text run, BREAKs left out (A1111 ignores them here)
    round_brackets: list[int] = []
    square_brackets: list[int] = []

    def multiply_from(start: int, factor: float) -> None:
        for i in range(start, len(weights)):
            weights[i] *= factor

    for match in _RE_ATTENTION.finditer(prompt):
        token, weight = match.group(0), match.group(1)
        if token.startswith("\\"):
            weights.append(1.0)
        elif token == "(":
            round_brackets.append(len(weights))
        elif token == "[":
            square_brackets.append(len(weights))
        elif weight is not None and round_brackets:
            multiply_from(round_brackets.pop(), _to_float(weight))
        elif token == ")" and round_brackets:
            multiply_from(round_brackets.pop(), 1.1)
        elif token == "]" and square_brackets:
            multiply_from(square_brackets.pop(), 1 / 1.1)
        else:
            weights.extend(1.0 for _ in _RE_BREAK.split(token))
    for pos in round_brackets:
        multiply_from(pos, 1.1)
    for pos in square_brackets:
        multiply_from(pos, 1 / 1.1)
    return any(w != 1.0 for w in weights)


def _to_float(text: str) -> float:
    try:
        return float(text)
    except ValueError:  # "1.2.3" matches [.\d]+; A1111 would raise and use the prompt literally
        return 1.0


def _ordered_keys(params: Mapping[str, object]) -> list[str]:
    fixed = [key for key in FIXED_KEYS if key in params]
    trailing = [key for key in TRAILING_KEYS if key in params]
    special = set(FIXED_KEYS) | set(TRAILING_KEYS)
    return fixed + [key for key in params if key not in special] + trailing
