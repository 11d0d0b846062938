"""The one contract every API dialect fulfils, and the checks the app runs on it.

As vLLM's per-API ``serving_*`` classes share one ``OpenAIServing`` base, each dialect package
(``server/dialects/<name>/``) exposes one ``DIALECT``, an instance of ``Dialect`` or a subclass:

    Dialect              name; routers, each built with one of the dialect's DialectRoute
    │                    subclasses (its error renderer); attach(services): its typed state
    │                    (default: none); job_payloads: the public job format (native only)
    └── A1111Dialect     attach: the saved options (A1111Options), read and repaired at start

``server/dialects/registry.py`` lists them; ``create_app`` mounts every router of every dialect in
that order and runs each ``attach`` in its lifespan, after the ``ServerRuntime`` and before the
workers start. A dialect never imports another: what two dialects share lives in ``server/``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from fastapi import APIRouter

from sdgate.server.errors import DialectRoute
from sdgate.server.runtime import JobPayloads
from sdgate.server.services import Services


@dataclass(frozen=True)
class Dialect:
    name: str
    routers: tuple[APIRouter, ...]
    # The public job format, rendered for webhook bodies and the event log: one dialect has it.
    job_payloads: JobPayloads | None = None

    def __post_init__(self) -> None:
        for router in self.routers:
            route_class = router.route_class
            if not issubclass(route_class, DialectRoute) or route_class.dialect != self.name:
                raise TypeError(f"dialect {self.name}: router {router.prefix or '/'} renders errors with "
                                f"{route_class.__name__}, not a DialectRoute of this dialect")

    @property
    def route_classes(self) -> tuple[type[DialectRoute], ...]:
        """The dialect's error renderers, one per router (distinct, in router order)."""
        found: list[type[DialectRoute]] = []
        for router in self.routers:
            route_class = router.route_class
            if issubclass(route_class, DialectRoute) and route_class not in found:
                found.append(route_class)
        return tuple(found)

    def attach(self, services: Services) -> None:
        """Builds the dialect's typed state into ``services.state`` (once per server start)."""


def job_payloads(dialects: Sequence[Dialect]) -> JobPayloads:
    """The one public job format among ``dialects``."""
    found = [d for d in dialects if d.job_payloads is not None]
    if len(found) != 1:
        names = ", ".join(d.name for d in found) or "none"
        raise ValueError(f"exactly one dialect must render job payloads; found {names}")
    payloads = found[0].job_payloads
    assert payloads is not None
    return payloads
