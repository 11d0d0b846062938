"""A1111's ``styles.csv``: named prompt fragments merged into a request's prompts.

The file has a header row ``name,prompt,negative_prompt`` (extra columns are ignored). A style's
text replaces ``{prompt}`` with the user's prompt when it has that placeholder; otherwise it is
appended after ", ". Styles apply in the order asked; an unknown name is skipped and logged
(A1111 skips it silently).
"""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("sdgate.styles")

STYLES_FILE = "styles.csv"


@dataclass(frozen=True)
class PromptStyle:
    name: str
    prompt: str
    negative_prompt: str


def load_styles(path: Path) -> dict[str, PromptStyle]:
    """The styles of ``path`` by name, in file order; {} when the file is missing or unreadable."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError):
        return {}
    styles: dict[str, PromptStyle] = {}
    for row in csv.DictReader(text.splitlines(), skipinitialspace=True):
        name = (row.get("name") or "").strip()
        if name:
            styles[name] = PromptStyle(name, row.get("prompt") or "", row.get("negative_prompt") or "")
    return styles


def merge_prompt(style_prompt: str, prompt: str) -> str:
    if "{prompt}" in style_prompt:
        return style_prompt.replace("{prompt}", prompt)
    return ", ".join(part for part in (prompt.strip(), style_prompt.strip()) if part)


def apply_styles(
    prompt: str, negative_prompt: str, names: tuple[str, ...] | list[str], styles: dict[str, PromptStyle]
) -> tuple[str, str]:
    """``(prompt, negative_prompt)`` with each named style merged in, in order."""
    for name in names:
        style = styles.get(name)
        if style is None:
            log.warning("unknown style %r skipped (GET /sdapi/v1/prompt-styles lists them)", name)
            continue
        prompt = merge_prompt(style.prompt, prompt)
        negative_prompt = merge_prompt(style.negative_prompt, negative_prompt)
    return prompt, negative_prompt
