"""The worker: claims jobs and runs them on an engine. Imports no torch; the engine is handed in."""

from sdgate.worker.control import JobControl, WorkerJobStore
from sdgate.worker.runner import Worker

__all__ = ["JobControl", "Worker", "WorkerJobStore"]
