"""``sdgate serve`` on a read-only data dir exits at once with one line saying so, no traceback.

A read-only directory is made for real: ``chmod 555`` for a normal user; as root (whom modes do
not stop) a read-only tmpfs mounted in a private mount namespace (``unshare --mount``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # one interpreter starts: about 2 s


def _serve(data_dir: Path, *, read_only: Path) -> subprocess.CompletedProcess[str]:
    serve = [sys.executable, "-m", "sdgate", "serve", "--engine", "null", "--port", "1",
             "--data-dir", str(data_dir)]
    if os.geteuid() != 0:
        read_only.chmod(0o555)
        try:
            return subprocess.run(serve, capture_output=True, text=True, timeout=120)
        finally:
            read_only.chmod(0o755)
    unshare = shutil.which("unshare")
    if unshare is None:
        pytest.skip("running as root without unshare: no way to make a read-only directory")
    probe = subprocess.run([unshare, "--mount", "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"running as root and unshare --mount is not allowed: {probe.stderr!r}")
    script = 'mount -t tmpfs -o ro tmpfs "$1" && shift && exec "$@"'
    return subprocess.run([unshare, "--mount", "sh", "-c", script, "sh", str(read_only), *serve],
                          capture_output=True, text=True, timeout=120)


@pytest.mark.skipif(sys.platform != "linux", reason="read-only mounts as root need Linux")
@pytest.mark.parametrize("inside", [False, True], ids=["data-dir-itself", "data-dir-to-create"])
def test_serve_on_a_read_only_data_dir_exits_with_one_line(tmp_path: Path, inside: bool) -> None:
    read_only = tmp_path / "ro"
    read_only.mkdir()
    data_dir = read_only / "data" if inside else read_only
    result = _serve(data_dir, read_only=read_only)

    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    what = f"cannot create {data_dir}" if inside else f"cannot create {data_dir.resolve() / 'sdgate.db'}"
    assert lines[0].startswith(f"StorageUnavailable: the data dir {data_dir} is read-only ({what}): ")
    assert lines[0].endswith(("Read-only file system", "Permission denied"))  # root: tmpfs; user: mode
