"""A really full disk (a 2 MiB tmpfs filled to the last byte): SQLite's and the OS's own errors
become ``StorageFull`` naming what could not be written, and writes work again once space returns.
Needs root and ``unshare --mount`` (a private mount namespace); skipped elsewhere."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # one interpreter starts: about 2 s
CHILD = Path(__file__).with_name("full_disk_child.py")


@pytest.mark.skipif(sys.platform != "linux" or os.geteuid() != 0, reason="a tmpfs mount needs root")
def test_a_full_tmpfs_is_storage_full_until_space_returns(tmp_path: Path) -> None:
    unshare = shutil.which("unshare")
    if unshare is None or subprocess.run([unshare, "--mount", "true"], capture_output=True).returncode:
        pytest.skip("unshare --mount is not available")
    script = 'mount -t tmpfs -o size=2m tmpfs "$1" && exec "$2" "$3" "$1"'
    result = subprocess.run([unshare, "--mount", "sh", "-c", script, "sh", str(tmp_path), sys.executable,
                             str(CHILD)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    outcome = dict(line.split(": ", 1) for line in result.stdout.strip().splitlines())
    assert outcome["submit"].startswith("StorageFull: storage full: could not write the job database (")
    assert outcome["put"] == "StorageFull: storage full: could not write an image (No space left on device)"
    assert outcome["probe"].startswith("StorageFull: storage full: could not write the job database")
    assert outcome["probe-after"] == outcome["images-probe-after"] == outcome["submit-after"] == "ok"
    assert outcome["faults-after"] == "None None"
