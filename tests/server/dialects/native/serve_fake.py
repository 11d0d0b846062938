"""A child process for the kill -9 test: the real app over the fake engine, under uvicorn.

    python tests/server/dialects/native/serve_fake.py DATA_DIR MODELS_DIR PORT
"""

from __future__ import annotations

import sys
from pathlib import Path

import uvicorn

sys.path.insert(0, str(Path(__file__).resolve().parents[4]))

from sdgate.server.app import create_app  # noqa: E402
from sdgate.settings import Settings  # noqa: E402
from tests.fakes import FakeEngine  # noqa: E402

if __name__ == "__main__":
    data_dir, models_dir, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    settings = Settings(data_dir=Path(data_dir), models_dir=Path(models_dir), device="cpu",
                        worker_poll_s=0.05,
                        job_lease_s=1.0)
    uvicorn.run(create_app(settings, engine=FakeEngine(slow_step_s=0.02)), host="127.0.0.1", port=port,
                log_level="warning")
