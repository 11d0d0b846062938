"""ComfyUI's server API (``reference/other_apis.md`` §1): prompts, queue, history, files, node
info and the ``/ws`` event socket, at their plain paths and under ``/api``."""

from __future__ import annotations

from dataclasses import dataclass

from sdgate.server.dialect import Dialect
from sdgate.server.dialects.comfy import router
from sdgate.server.dialects.comfy.state import comfy_state
from sdgate.server.services import Services


@dataclass(frozen=True)
class ComfyDialect(Dialect):
    def attach(self, services: Services) -> None:
        """Its file and prompt tables' reader, and the socket hub listening to the job events."""
        comfy_state(services)


DIALECT = ComfyDialect(name=router.DIALECT, routers=(router.router, router.api_router))
