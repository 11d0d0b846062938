"""The real app on the real diffusers engine (tiny models, CPU), for route tests that need pixels."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx

from sdgate.core.models import ModelCatalog
from sdgate.server.app import create_app
from sdgate.settings import Settings


@asynccontextmanager
async def real_engine_client(models: Path, data_dir: Path) -> AsyncIterator[httpx.AsyncClient]:
    """An in-process client of the whole app over ``models``; torch on one thread, so results do
    not depend on how busy the machine is."""
    import torch

    from sdgate.engine.diffusers_engine import DiffusersEngine

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    settings = Settings(data_dir=data_dir, models_dir=models, device="cpu", worker_poll_s=0.02)
    app = create_app(settings, engine=DiffusersEngine(settings, ModelCatalog(settings, builtin_dir=None)))
    try:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://sdgate", timeout=120) as c:
                yield c
    finally:
        torch.set_num_threads(threads)
