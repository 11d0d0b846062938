"""The client commands share ``cli/common.py``; none of them imports ``generate`` back (issue 14)."""

from __future__ import annotations

import subprocess
import sys


def test_sibling_commands_do_not_import_generate() -> None:
    code = (
        "import sys\n"
        "import sdgate.cli.batch, sdgate.cli.jobs, sdgate.cli.info, sdgate.cli.common\n"
        "print('sdgate.cli.generate' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
