"""Everything a running server holds, built from ``Settings`` in one place.

In embedded mode (the default) the process also runs the engine and one worker thread per device;
an API-only process (``run_workers=False``) only talks to the store and the image store.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sdgate.core.engine import Engine, ModelDefaults
from sdgate.core.models import ModelCatalog, ModelInfo
from sdgate.jobs.events import JobEvents
from sdgate.jobs.images import LocalImageStore
from sdgate.jobs.store import SqlJobStore
from sdgate.settings import Settings

if TYPE_CHECKING:
    from sdgate.worker.runner import Worker

log = logging.getLogger("sdgate.server")


@dataclass
class Services:
    settings: Settings
    catalog: ModelCatalog
    store: SqlJobStore
    images: LocalImageStore
    events: JobEvents
    engine: Engine | None = None
    workers: list[Worker] = field(default_factory=list)
    state: dict[str, Any] = field(default_factory=dict)  # per-dialect state (A1111 options, ...)

    @classmethod
    def build(cls, settings: Settings, *, engine: Engine | None = None, run_workers: bool = True) -> Services:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        catalog = ModelCatalog(settings)
        events = JobEvents()
        store = SqlJobStore(settings.database_url, events=events, max_queue=settings.max_queue)
        images = LocalImageStore(settings.images_dir)
        services = cls(settings=settings, catalog=catalog, store=store, images=images, events=events)
        if run_workers:
            if engine is None:
                from sdgate.engine import create_engine

                engine = create_engine(settings, catalog)
            services.engine = engine
        return services

    def start(self) -> None:
        """Recover jobs a dead process left running (each is re-queued until it has been started
        ``job_max_attempts`` times, then failed: a job that kills its process must not crash-loop
        the server), then start the workers (embedded mode)."""
        requeued = self.store.recover(max_attempts=self.settings.job_max_attempts)
        if requeued:
            log.info("re-queued %d job(s) left running by a previous process", len(requeued))
        if self.engine is None:
            return
        from sdgate.worker.runner import Worker

        for i in range(max(1, self.settings.workers)):
            worker = Worker(
                self.store, self.engine, self.images, self.events, self.settings, worker_id=f"worker-{i}"
            )
            worker.start()
            self.workers.append(worker)

    def stop(self) -> None:
        for worker in self.workers:
            worker.stop(timeout=30)
        self.workers.clear()

    def model_defaults(self, info: ModelInfo) -> ModelDefaults:
        if self.engine is not None and self.settings.engine == "null":
            return self.engine.model_defaults(info.name)
        return self.catalog.defaults_for(info)

    def current_preview(self, job_id: str) -> Any:
        for worker in self.workers:
            preview = worker.current_preview(job_id)
            if preview is not None:
                return preview
        return None
