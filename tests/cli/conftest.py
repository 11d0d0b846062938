"""CLI fixtures: the real app (FakeEngine) on a loopback port, or a fake native server in process."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import typer

from sdgate.cli import common, generate
from sdgate.client import Client
from tests.sdk.conftest import ThreadedServer
from tests.sdk.fakes import FakeNative


@pytest.fixture
def live_server(tmp_path: Path) -> Iterator[ThreadedServer]:
    from sdgate.settings import Settings
    from tests.fakes import write_fake_checkpoint

    write_fake_checkpoint(tmp_path / "models" / "Stable-diffusion" / "alpha.safetensors")
    settings = Settings(
        data_dir=tmp_path / "data", models_dir=tmp_path / "models", device="cpu", worker_poll_s=0.02
    )
    with ThreadedServer(settings) as server:
        yield server


@pytest.fixture
def app() -> typer.Typer:
    """The ``sdgate`` commands that talk to a server (generate, batch, jobs, info)."""
    app = typer.Typer(add_completion=False)
    generate.mount(app)
    return app


@pytest.fixture
def native(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeNative]:
    """A fake sdgate server behind every client the CLI makes."""
    fake = FakeNative(steps=1, long_poll=True)

    def make_client(options: common.ClientOptions) -> Client:
        return Client(options.backend or "http://sdgate.test", max_retries=0, transport=fake.transport)

    monkeypatch.setattr(common, "make_client", make_client)
    yield fake
