"""Wire models of the answers the server gives whatever the dialect: the default error body (what
``DialectRoute.render_error`` writes, the native API's and the health checks' shape) and the auth
middleware's 401, which comes before any route and so before any dialect."""

from __future__ import annotations

from pydantic import BaseModel


class ErrorOut(BaseModel):
    code: str
    message: str
    field: str | None = None


class ErrorBody(BaseModel):
    """Every native error: ``{"error": {"code", "message", "field"?}}``."""

    error: ErrorOut

