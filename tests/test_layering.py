"""The SDK, CLI, core and server API import without torch (DESIGN: torch lives below the engine)."""

from __future__ import annotations

import subprocess
import sys

TORCH_FREE = [
    "sdgate",
    "sdgate.core.requests",
    "sdgate.core.models",
    "sdgate.core.images",
    "sdgate.core.infotext",
    "sdgate.core.samplers",
    "sdgate.settings",
    "sdgate.jobs.store",
    "sdgate.worker.runner",
    "sdgate.engine",
    "sdgate.server.app",
    "sdgate.cli.main",
]


def test_modules_import_without_torch() -> None:
    code = (
        "import sys\n"
        f"for name in {TORCH_FREE!r}:\n"
        "    __import__(name)\n"
        "heavy = sorted(m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules)\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "", f"heavy modules imported: {out.stdout}"


def test_core_imports_neither_fastapi_nor_torch() -> None:
    code = (
        "import sys\n"
        "import sdgate.core.requests, sdgate.core.models, sdgate.core.images, sdgate.core.infotext\n"
        "import sdgate.core.samplers, sdgate.core.jobs, sdgate.core.engine, sdgate.core.errors\n"
        "print(','.join(m for m in ('fastapi', 'torch', 'starlette') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == ""
