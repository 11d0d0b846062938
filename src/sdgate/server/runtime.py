"""What the server keeps while it runs, whatever dialect a request speaks: the job event log,
idempotency keys, webhooks, uploads, each principal's saved options and the retention task.

Everything here that a caller reads is its own: the event log delivers a job's events only to its
owner's subscribers (an admin's stream: everyone's), uploads say whose an image is, and options are
kept per principal.

Built by the app's lifespan from ``Services`` (before the workers start, so webhooks hear of jobs
recovered at start-up), kept in ``services.state`` and found by routes through ``RuntimeDep``. How a
job and its events look to webhook receivers and event streams is one dialect's public job format
(the native API's): it comes in as ``JobPayloads``, so nothing here imports a dialect.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated, Any, Protocol

from fastapi import Depends

from sdgate.core.jobs import Job, JobEventKind
from sdgate.jobs.audit import AuditLog
from sdgate.jobs.eventlog import TERMINAL, EventLog
from sdgate.jobs.idempotency import IdempotencyKeys
from sdgate.jobs.principal_options import PrincipalOptions
from sdgate.jobs.retention import Retention
from sdgate.jobs.uploads import Uploads
from sdgate.jobs.webhooks import Webhooks, load_secret
from sdgate.server.admission import quotas_of
from sdgate.server.deps import ServicesDep
from sdgate.server.services import Services


class JobPayloads(Protocol):
    """A job, and one of its events, as JSON for webhook bodies and event streams; ``base`` is the
    public URL links start with ("" for relative links)."""

    def job(self, job: Job, *, base: str) -> dict[str, Any]: ...

    def event(self, kind: JobEventKind, job: Job, *, base: str) -> dict[str, Any]: ...


@dataclass
class ServerRuntime:
    services: Services
    events: EventLog
    keys: IdempotencyKeys
    webhooks: Webhooks
    uploads: Uploads
    principal_options: PrincipalOptions
    retention: Retention
    audit: AuditLog  # one record per call (server/audit.py), written by its own thread
    base: str  # the public URL links start with ("" for relative links)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _remove_listener: Callable[[], None] | None = None

    @classmethod
    def attach(cls, services: Services, payloads: JobPayloads) -> ServerRuntime:
        """Builds the runtime, puts it in ``services.state`` and starts following job events (the
        store logs them, in the outbox). Call before ``services.start()``."""
        settings = services.settings
        base = (settings.public_url or "").rstrip("/")
        db = services.database  # the handle the jobs/ modules with their own tables are built from

        def render_event(kind: JobEventKind, job: Job) -> dict[str, Any]:
            return payloads.event(kind, job, base=base)

        runtime = cls(
            services=services,
            events=EventLog(db, render_event, services.outbox),
            keys=IdempotencyKeys(db, ttl_s=settings.idempotency_ttl_s),
            webhooks=Webhooks(
                db,
                secret=load_secret(settings.webhook_secret, settings.data_dir),
                render=lambda job: payloads.job(job, base=base),
                allow_private=settings.allow_private_callbacks,
                max_attempts=settings.webhook_max_attempts,
                backoff_s=settings.webhook_backoff_s,
                timeout_s=settings.webhook_timeout_s,
                on_attempt=lambda outcome: services.metrics.webhook_deliveries.labels(outcome).inc(),
            ),
            uploads=Uploads(db),
            principal_options=PrincipalOptions(db),
            retention=Retention(services.store, services.images, ttl_s=settings.retention_ttl_s,
                                interval_s=settings.retention_interval_s,
                                audit_ttl_s=settings.audit_retention_s,
                                quotas=lambda: quotas_of(services)),
            audit=AuditLog(db),
            base=base,
        )
        runtime._remove_listener = services.events.add_listener(runtime._on_event, kinds=TERMINAL)
        services.state.put(runtime)
        return runtime

    def _on_event(self, kind: JobEventKind, job: Job) -> None:
        if kind in TERMINAL:
            self.webhooks.notify()

    async def start(self) -> None:
        """The background tasks: webhook delivery and retention cleanup."""
        self._tasks = [
            asyncio.create_task(self.webhooks.run(self.services.store), name="sdgate-webhooks"),
            asyncio.create_task(self.retention.run(), name="sdgate-retention"),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        await asyncio.to_thread(self.audit.close)  # writes the calls' records still queued

    def detach(self) -> None:
        self.events.close()
        if self._remove_listener is not None:
            self._remove_listener()
            self._remove_listener = None


def get_runtime(services: ServicesDep) -> ServerRuntime:
    return services.state.get(ServerRuntime)


RuntimeDep = Annotated[ServerRuntime, Depends(get_runtime)]
