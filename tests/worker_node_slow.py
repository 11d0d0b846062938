"""A worker node (``create_worker_app``) over the tests' fake engine, for the node tests.

    python tests/worker_node_slow.py DATA_DIR MODELS_DIR PORT LEASE_S

Prompts with "slow" take ``STEP_S`` per step, so a SIGTERM arrives while a job runs. What
``sdgate worker`` runs, with the fake engine in place of the configured one.
"""

from __future__ import annotations

import sys
from pathlib import Path

import uvicorn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sdgate.server.app import create_worker_app  # noqa: E402
from sdgate.settings import Settings  # noqa: E402
from tests.fakes import FakeEngine  # noqa: E402

STEP_S = 0.1

if __name__ == "__main__":
    data_dir, models_dir, port, lease_s = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
    settings = Settings(data_dir=Path(data_dir), models_dir=Path(models_dir), device="cpu",
                        worker_poll_s=0.05, job_lease_s=lease_s, drain_timeout_s=60)
    uvicorn.run(create_worker_app(settings, engine=FakeEngine(slow_step_s=STEP_S)), host="127.0.0.1",
                port=port, log_level="warning")
