"""The OpenAI Images API (``/v1/images/{generations,edits,variations}``, ``/v1/models``) and the
signed links its ``response_format=url`` answers hand out (their signer is built at the first link,
so a server that never hands one out writes no key)."""

from __future__ import annotations

from sdgate.server.dialect import Dialect
from sdgate.server.dialects.openai import router

DIALECT = Dialect(name=router.DIALECT, routers=(router.router,))
