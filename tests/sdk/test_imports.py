"""The SDK and its CLI commands import without torch, the server, or the database (DESIGN)."""

from __future__ import annotations

import subprocess
import sys

MODULES = [
    "sdgate",
    "sdgate.client",
    "sdgate.cli.common",
    "sdgate.cli.generate",
    "sdgate.cli.jobs",
    "sdgate.cli.batch",
    "sdgate.cli.info",
]
HEAVY = ("torch", "diffusers", "transformers", "fastapi", "starlette", "sqlalchemy", "uvicorn", "numpy")


def test_sdk_imports_light() -> None:
    code = (
        "import sys\n"
        f"for name in {MODULES!r}:\n"
        "    __import__(name)\n"
        "import sdgate\n"
        "assert sdgate.Client is sdgate.client.Client and sdgate.AsyncClient is sdgate.client.AsyncClient\n"
        f"print(','.join(sorted(m for m in {HEAVY!r} if m in sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "", f"heavy modules imported: {out.stdout}"


def test_import_sdgate_alone_does_not_load_the_sdk() -> None:
    code = "import sys, sdgate; print('sdgate.client' in sys.modules, 'httpx' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "False False", out.stderr


def test_every_public_name_exists() -> None:
    import sdgate
    import sdgate.client

    assert [n for n in sdgate.client.__all__ if not hasattr(sdgate.client, n)] == []
    assert [n for n in sdgate.__all__ if not hasattr(sdgate, n)] == []
