"""The dialects a server speaks, in the order their routes are mounted: where two dialects share a
prefix (``/v1/``: Stability and OpenAI), the first one's routes are tried first."""

from __future__ import annotations

from sdgate.server.dialect import Dialect
from sdgate.server.dialects import a1111, comfy, hf, native, openai, stability

DIALECTS: tuple[Dialect, ...] = (
    stability.DIALECT,
    openai.DIALECT,
    hf.DIALECT,
    a1111.DIALECT,
    comfy.DIALECT,
    native.DIALECT,
)
