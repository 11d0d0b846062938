from __future__ import annotations

from typing import ClassVar

from sdgate.client.backends._base import Backend


class OpenAIBackend(Backend):
    kind: ClassVar[str] = "openai"
