"""One real uvicorn on loopback per test module, serving the app over the fake engine."""

from tests.server.dialects.stability.loopback import engine, live, models_dir, settings

__all__ = ["engine", "live", "models_dir", "settings"]
