"""A server whose engine kills its own process on the prompt "die", for the crash-loop test.

    python tests/worker/serve_poison.py DATA_DIR MODELS_DIR PORT

The real app (recovery, worker, dialects) under uvicorn over the server tests' fake engine; "die"
reports one step, waits a moment (so the test can queue more behind it), then ``os._exit(17)``:
no cleanup, as an OOM kill or a segfault in a native library would leave it.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import uvicorn

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from sdgate.core.engine import EngineInputs, EngineOutput, GenerationControl, StepReport  # noqa: E402
from sdgate.core.requests import GenerationRequest  # noqa: E402
from sdgate.server.app import create_app  # noqa: E402
from sdgate.settings import Settings  # noqa: E402
from tests.fakes import FakeEngine  # noqa: E402

DIE_EXIT_CODE = 17


class PoisonEngine(FakeEngine):
    def generate(
        self, request: GenerationRequest, inputs: EngineInputs, control: GenerationControl
    ) -> EngineOutput:
        if request.prompt == "die":
            control.on_step(StepReport(iteration=0, iterations=1, step=1, steps=2))
            time.sleep(0.5)
            os._exit(DIE_EXIT_CODE)
        return super().generate(request, inputs, control)


if __name__ == "__main__":
    data_dir, models_dir, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    settings = Settings(
        data_dir=Path(data_dir), models_dir=Path(models_dir), device="cpu", worker_poll_s=0.05,
        job_lease_s=1.0
    )
    uvicorn.run(create_app(settings, engine=PoisonEngine()), host="127.0.0.1", port=port, log_level="warning")
