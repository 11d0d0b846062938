"""The Stability AI REST API: v1 (``/v1/generation/...``, ``/v1/engines/list``, ``/v1/user/...``)
and v2beta (``/v2beta/stable-image/generate/...``), each with its own error body."""

from __future__ import annotations

from sdgate.server.dialect import Dialect
from sdgate.server.dialects.stability.router import DIALECT as NAME
from sdgate.server.dialects.stability.router import router, v2_router

DIALECT = Dialect(name=NAME, routers=(router, v2_router))
