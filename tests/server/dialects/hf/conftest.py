"""A real uvicorn on loopback serving the app over the fake engine."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from tests.server.dialects.stability.loopback import serve
from tests.server.fakes import FakeEngine

from sdgate.settings import Settings


@pytest.fixture
def live(settings: Settings, engine: FakeEngine) -> Iterator[str]:
    with serve(settings, engine) as url:
        yield url
