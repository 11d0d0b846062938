"""The SDK installs and works in a fresh venv with no torch (and no server extras) in it."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.sdk.conftest import ThreadedServer

REPO = Path(__file__).resolve().parents[2]
SDK_DEPS = ["httpx", "pydantic", "pydantic-settings", "typer", "rich", "pillow"]

USE_IT = textwrap.dedent(
    """
    import sys
    import sdgate
    from sdgate import AsyncClient, Client

    url = sys.argv[1]
    with Client(url) as client:
        result = client.txt2img("a red circle", seed=5, width=64, height=64, steps=2)
        assert result.seeds == [5], result.seeds
        assert result.images[0].size == (64, 64)
        assert "alpha" in [m.name for m in client.models.list()]
    heavy = [m for m in ("torch", "diffusers", "fastapi", "sqlalchemy", "uvicorn") if m in sys.modules]
    assert not heavy, heavy
    print("ok", sdgate.__version__)
    """
)


@pytest.mark.slow
def test_sdk_in_a_fresh_venv_without_torch(tmp_path: Path, live_server: ThreadedServer) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    pip = [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    subprocess.run([*pip, "--no-deps", "-e", str(REPO)], check=True, timeout=300)
    subprocess.run([*pip, *SDK_DEPS], check=True, timeout=600)
    probe = subprocess.run(
        [str(python), "-c", "import importlib.util as u; print(u.find_spec('torch'))"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert probe.stdout.strip() == "None", "torch must not be in the fresh venv"
    out = subprocess.run(
        [str(python), "-c", USE_IT, live_server.url], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok 0.1.0"
    cli = subprocess.run([str(python), "-m", "sdgate", "version"], capture_output=True, text=True, timeout=60)
    assert cli.returncode == 0 and cli.stdout.strip() == "0.1.0", cli.stderr
