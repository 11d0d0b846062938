"""Engines: everything torch and diffusers. Importing this package imports neither.

``create_engine(settings, catalog)`` picks the engine ``settings.engine`` names and imports it
only then, so the server and CLI load without torch when they do not run one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sdgate.core.engine import Engine
    from sdgate.core.models import ModelCatalog
    from sdgate.settings import Settings

__all__ = ["create_engine"]


def create_engine(settings: Settings, catalog: ModelCatalog) -> Engine:
    if settings.engine == "null":
        from sdgate.engine.null import NullEngine

        return NullEngine(settings, catalog)
    from sdgate.engine.diffusers_engine import DiffusersEngine

    return DiffusersEngine(settings, catalog)
