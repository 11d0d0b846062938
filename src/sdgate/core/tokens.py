"""Counting a prompt's CLIP tokens without torch, to bound what one request may ask the text encoder.

The count uses the CLIP BPE files shipped in ``assets/tokenizer`` with the same normaliser and
pre-tokeniser as transformers' ``CLIPTokenizer`` (lower case, whitespace folded, CLIP's word
pattern, byte-level BPE with ``</w>`` word ends), run by the Rust ``tokenizers`` package (a
transformers dependency, so there wherever the server is): its BPE is ``O(n log n)`` per word,
where a pure-Python BPE is quadratic in a word's length, so a long hostile prompt costs
milliseconds. Callers bound a prompt's bytes first. Where ``tokenizers`` is missing, the count
falls back to CLIP's words and punctuation runs, a lower bound of the real count.

The count is of the text as written, attention syntax and ``<lora:...>`` tags included: a little
more than A1111's counter shows, which is the safe side for a limit.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Any

TOKENIZER_DIR = Path(__file__).resolve().parent.parent / "assets" / "tokenizer"
# CLIP's pre-tokenisation pattern (``\p{L}`` / ``\p{N}`` spelled for Python's ``re`` in the fallback).
_CLIP_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
_FALLBACK_WORDS = re.compile(r"'s|'t|'re|'ve|'m|'ll|'d|[^\W\d_]+|\d|[^\s\w]+|_+")


@functools.cache
def _tokenizer() -> Any:
    """The CLIP BPE tokenizer (built once, ~0.1 s), or None without the ``tokenizers`` package."""
    try:
        from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers
    except ImportError:
        return None
    bpe = models.BPE.from_file(
        str(TOKENIZER_DIR / "vocab.json"),
        str(TOKENIZER_DIR / "merges.txt"),
        unk_token="<|endoftext|>",
        continuing_subword_prefix="",
        end_of_word_suffix="</w>",
    )
    tokenizer = Tokenizer(bpe)
    tokenizer.normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()]
    )
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_CLIP_PATTERN), behavior="removed", invert=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ]
    )
    return tokenizer


def count_tokens(text: str) -> int:
    """CLIP tokens of ``text``, without the start and end tokens. ``text`` must be valid Unicode."""
    if not text or text.isspace():
        return 0
    tokenizer = _tokenizer()
    if tokenizer is None:
        return len(_FALLBACK_WORDS.findall(text))
    return len(tokenizer.encode(text, add_special_tokens=False).ids)
