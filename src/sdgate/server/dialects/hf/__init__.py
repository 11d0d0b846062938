"""The Hugging Face Inference API's text-to-image task (``POST /models/{model_id}``)."""

from __future__ import annotations

from sdgate.server.dialect import Dialect
from sdgate.server.dialects.hf import router

DIALECT = Dialect(name=router.DIALECT, routers=(router.router,))
