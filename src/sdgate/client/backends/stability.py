from __future__ import annotations

from typing import ClassVar

from sdgate.client.backends._base import Backend


class StabilityBackend(Backend):
    kind: ClassVar[str] = "stability"
