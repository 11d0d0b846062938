"""A pasted infotext is hostile input: parsing stays linear in its length."""

from __future__ import annotations

import time

from sdgate.core.infotext import parse_infotext


def test_a_long_line_without_keys_parses_in_linear_time() -> None:
    # 60 KB of words and no "key: value" (A1111's own pattern backtracks quadratically: ~30 s here).
    start = time.perf_counter()
    parsed = parse_infotext("a " * 30000)
    assert time.perf_counter() - start < 5.0
    assert parsed["Prompt"] == ("a " * 30000).strip()


def test_keys_are_still_found_after_a_long_prompt() -> None:
    parsed = parse_infotext("a " * 5000 + "\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 3")
    assert parsed["Steps"] == "20" and parsed["Sampler"] == "Euler a" and parsed["Seed"] == "3"
