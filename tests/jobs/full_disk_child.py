"""Run inside a small tmpfs by ``test_full_disk``: fill the disk, write, free it, write again.

    python tests/jobs/full_disk_child.py DIR     # prints one "step: outcome" line per write
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from sdgate.core.requests import GenerationRequest  # noqa: E402
from sdgate.jobs.images import LocalImageStore  # noqa: E402
from sdgate.jobs.store import SqlJobStore  # noqa: E402


def attempt(step: str, write: object) -> None:
    try:
        write()  # type: ignore[operator]
        print(f"{step}: ok")
    except Exception as exc:  # noqa: BLE001 - the outcome is what the test reads
        print(f"{step}: {type(exc).__name__}: {exc}")


def main(root: Path) -> None:
    store = SqlJobStore(f"sqlite:///{root / 'sdgate.db'}")
    images = LocalImageStore(root / "images")
    filler = root / "filler"
    try:
        with filler.open("wb") as fh:
            while True:
                fh.write(bytes(65536))
    except OSError:
        pass
    attempt("submit", lambda: store.submit(GenerationRequest(prompt="y" * 20000)))
    attempt("put", lambda: images.put(os.urandom(100_000)))
    attempt("probe", store.probe_write)
    filler.unlink()
    attempt("probe-after", store.probe_write)
    attempt("images-probe-after", images.probe_write)
    attempt("submit-after", lambda: store.submit(GenerationRequest(prompt="z")))
    print(f"faults-after: {store.storage_fault} {images.storage_fault}")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
