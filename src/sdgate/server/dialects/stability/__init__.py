"""The Stability AI REST API: v1 (``/v1/generation/...``, ``/v1/engines/list``, ``/v1/user/...``)
and v2beta (``/v2beta/stable-image/generate/...``), each with its own error body."""

from __future__ import annotations

from sdgate.server.dialect import Dialect
from sdgate.server.dialects.stability import router

DIALECT = Dialect(name=router.DIALECT, routers=(router.router, router.v2_router))
