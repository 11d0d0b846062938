"""Convert OpenAI CLIP's ``bpe_simple_vocab_16e6.txt.gz`` into ``vocab.json`` + ``merges.txt``.

Run once, by hand, to regenerate ``src/sdgate/assets/tokenizer/``:

    pip download --no-deps open_clip_torch -d /tmp/oc
    unzip -p /tmp/oc/open_clip_torch-*.whl open_clip/bpe_simple_vocab_16e6.txt.gz > /tmp/bpe.txt.gz
    python scripts/convert_clip_bpe.py /tmp/bpe.txt.gz src/sdgate/assets/tokenizer

The result is what ``transformers.CLIPTokenizer`` reads: 49,408 tokens, 48,894 merges.
"""

from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path

N_MERGES = 49152 - 256 - 2


def byte_alphabet() -> list[str]:
    """The 256 printable stand-ins GPT-2/CLIP use for raw bytes, in CLIP's order."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    codes = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            codes.append(256 + extra)
            extra += 1
    return [chr(c) for c in codes]


def convert(source: Path, target: Path) -> None:
    with gzip.open(source) as fh:
        lines = fh.read().decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1 : N_MERGES + 1]]
    alphabet = byte_alphabet()
    tokens = alphabet + [a + "</w>" for a in alphabet] + ["".join(m) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    target.mkdir(parents=True, exist_ok=True)
    vocab = {tok: i for i, tok in enumerate(tokens)}
    (target / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    merge_lines = ["#version: 0.2"] + [" ".join(m) for m in merges]
    (target / "merges.txt").write_text("\n".join(merge_lines) + "\n", encoding="utf-8")


if __name__ == "__main__":
    convert(Path(sys.argv[1]), Path(sys.argv[2]))
