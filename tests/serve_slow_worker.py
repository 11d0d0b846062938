"""``sdgate serve`` (or, with ``--worker-node``, ``sdgate worker``) over the tests' fake engine, for
the process-boundary and node tests.

    python tests/serve_slow_worker.py DATA_DIR MODELS_DIR PORT LEASE_S [--worker-node]

The real app (recovery, workers, dialects; a worker node: workers, health and metrics only) under
uvicorn; prompts with "slow" take ``STEP_S`` per step and report a preview at every step. A short
lease, so a ``kill -9`` is noticed in seconds; a worker node drains for up to a minute on SIGTERM.
"""

from __future__ import annotations

import sys
from pathlib import Path

import uvicorn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sdgate.server.app import create_app, create_worker_app  # noqa: E402
from sdgate.settings import Settings  # noqa: E402
from tests.fakes import FakeEngine  # noqa: E402

STEP_S = 0.1

if __name__ == "__main__":
    data_dir, models_dir, port, lease_s = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
    worker_node = "--worker-node" in sys.argv[5:]
    settings = Settings(data_dir=Path(data_dir), models_dir=Path(models_dir), device="cpu",
                        worker_poll_s=0.05, job_lease_s=lease_s, drain_timeout_s=60 if worker_node else 30)
    engine = FakeEngine(slow_step_s=STEP_S)
    app = create_worker_app(settings, engine=engine) if worker_node else create_app(settings, engine=engine)
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")
