"""The AUTOMATIC1111 WebUI API (``/sdapi/v1``), as v1.10.1 speaks it."""

from __future__ import annotations

from sdgate.server.dialect import Dialect
from sdgate.server.dialects.a1111 import controlnet_routes, extras, networks, router
from sdgate.server.services import Services


class A1111Dialect(Dialect):
    def attach(self, services: Services) -> None:
        """The saved options (A1111's global ``opts``), read at start: a bad saved file is repaired
        and logged then, not at the first request."""
        router.get_options(services)


DIALECT = A1111Dialect(
    name=router.DIALECT,
    routers=(router.router, networks.router, extras.router, controlnet_routes.router),
)
