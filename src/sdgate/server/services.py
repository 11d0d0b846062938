"""Everything a running server holds, built from ``Settings`` in one place.

In embedded mode (the default) the process also runs the engine and one worker thread per device;
an API-only process (``run_workers=False``, or ``settings.workers == 0``: ``sdgate serve --workers
0``) only talks to the store and the image store. Every process follows the job outbox, so events of
jobs that another process's workers run reach this one's waiters and streams; running jobs belong
to whoever holds their lease, so starting a process never takes a job from a live worker.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar, cast

from sdgate.core.engine import Engine, ModelDefaults
from sdgate.core.jobs import JobStore
from sdgate.core.models import ModelCatalog, ModelInfo
from sdgate.jobs.events import JobEvents
from sdgate.jobs.factory import Stores, stores_for
from sdgate.jobs.images import ImageStore
from sdgate.jobs.outbox import OutboxFollower
from sdgate.metrics import Metrics
from sdgate.settings import Settings

if TYPE_CHECKING:
    from sdgate.worker.runner import Worker

log = logging.getLogger("sdgate.server")
T = TypeVar("T")


class StateRegistry:
    """Per-dialect and per-feature state, keyed by its type (one instance per type): a dialect
    stores its own typed object (``services.state.put(A1111State(...))``) and finds it with
    ``services.state.get(A1111State)``, so no string keys and no ``Any`` leak into callers."""

    def __init__(self) -> None:
        self._items: dict[type, object] = {}

    def put(self, value: object) -> None:
        self._items[type(value)] = value

    def get(self, kind: type[T]) -> T:
        """Raises ``KeyError`` naming the type when none was put."""
        try:
            return cast(T, self._items[kind])
        except KeyError:
            raise KeyError(f"no {kind.__name__} in the server's state") from None

    def find(self, kind: type[T]) -> T | None:
        return cast("T | None", self._items.get(kind))

    def setdefault(self, kind: type[T], factory: Callable[[], T]) -> T:
        """The stored ``kind``, built by ``factory`` on first use."""
        found = self._items.get(kind)
        if found is None:
            found = self._items[kind] = factory()
        return cast(T, found)

    def remove(self, kind: type) -> None:
        self._items.pop(kind, None)


@dataclass
class Services:
    """The ports a server runs on: only protocols (``JobStore``, ``ImageStore``, the event bus and
    outbox, an ``Engine``), built from URLs by ``jobs.factory``; nothing here names a concrete store."""

    settings: Settings
    catalog: ModelCatalog
    stores: Stores
    engine: Engine | None = None
    workers: list[Worker] = field(default_factory=list)
    metrics: Metrics = field(default_factory=Metrics)
    state: StateRegistry = field(default_factory=StateRegistry)  # per-dialect typed state

    @classmethod
    def build(cls, settings: Settings, *, engine: Engine | None = None, run_workers: bool = True) -> Services:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        catalog = ModelCatalog(settings)
        services = cls(settings=settings, catalog=catalog, stores=stores_for(settings))
        from sdgate.server import content

        try:
            content.attach(services)  # the prompt blocklist: a file that does not load stops the start
            if run_workers and settings.workers > 0:
                if engine is None:
                    from sdgate.engine import create_engine

                    engine = create_engine(settings, catalog)
                services.engine = content.with_safety_checker(services, engine)
        except BaseException:
            services.stores.close()
            raise
        return services

    @property
    def store(self) -> JobStore:
        return self.stores.jobs

    @property
    def images(self) -> ImageStore:
        return self.stores.images

    @property
    def events(self) -> JobEvents:
        return self.stores.events

    @property
    def outbox(self) -> OutboxFollower:
        return self.stores.outbox

    @property
    def database(self) -> Any:
        """The handle ``jobs/`` modules with their own tables are built from (event log, keys,
        webhooks, uploads); opaque here: nothing outside ``jobs/`` runs SQL on it."""
        return self.stores.database

    def start(self, *, worker_node: bool = False) -> None:
        """Follow the outbox, hand back jobs whose worker's lease expired (each is re-queued until
        it has been started ``job_max_attempts`` times, then failed: a job that kills its process
        must not crash-loop the server), then start the workers, which keep doing so.
        ``worker_node``: no dialect here, so the follower reads no row: submissions' NOTIFYs wake
        the workers (``OutboxFollower.start(queued_only=True)``)."""
        self.outbox.start(queued_only=worker_node)
        self.metrics.watch_queue(self.store.count_by_state)
        stats = getattr(self.engine, "memory_stats", None)
        if callable(stats):
            # the device the engine resolved (cuda:0), not the setting (auto)
            self.metrics.watch_gpu(stats, str(getattr(self.engine, "device", self.settings.device)))
        requeued = self.store.requeue_expired(max_attempts=self.settings.job_max_attempts)
        if requeued:
            log.info("re-queued %d job(s) whose worker's lease expired", len(requeued))
        if self.engine is None:
            return
        from sdgate.worker.runner import Worker

        for _ in range(self.settings.workers):
            worker = Worker(self.store, self.engine, self.images, self.events, self.settings,
                            metrics=self.metrics)
            worker.start()
            self.workers.append(worker)

    def stop(self) -> None:
        for worker in self.workers:
            worker.stop(timeout=self.settings.drain_timeout_s)
        self.workers.clear()
        self.stores.close()

    def model_defaults(self, info: ModelInfo) -> ModelDefaults:
        """What a request that leaves size or steps out gets: the engine's answer where one runs
        (it knows what loading found out), else the catalog's (an API-only process)."""
        if self.engine is not None:
            return self.engine.model_defaults(info.name)
        return self.catalog.defaults_for(info)

    def current_preview(self, job_id: str) -> Any:
        """The running job's latest preview: from this process's worker when it runs the job (the
        freshest), else the one its worker stored, whichever process that is."""
        for worker in self.workers:
            preview = worker.current_preview(job_id)
            if preview is not None:
                return preview
        png = self.store.preview(job_id)
        if png is None:
            return None
        from PIL import Image

        try:
            image = Image.open(io.BytesIO(png))
            image.load()
        except (OSError, ValueError):
            log.warning("job %s: its stored preview does not decode", job_id)
            return None
        return image
