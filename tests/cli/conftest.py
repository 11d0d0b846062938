"""CLI fixtures: the real app (FakeEngine) on a loopback port."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.sdk.conftest import ThreadedServer


@pytest.fixture
def live_server(tmp_path: Path) -> Iterator[ThreadedServer]:
    from sdgate.settings import Settings
    from tests.server.fakes import write_fake_checkpoint

    write_fake_checkpoint(tmp_path / "models" / "Stable-diffusion" / "alpha.safetensors")
    settings = Settings(
        data_dir=tmp_path / "data", models_dir=tmp_path / "models", device="cpu", worker_poll_s=0.02
    )
    with ThreadedServer(settings) as server:
        yield server
