"""The native job API (``/api/v1``): jobs, their events, uploads, images, the server's names, and
the API keys admin API.

Its job format is the server's public one: webhook bodies and logged events are rendered by it
(``NativePayloads``), whichever dialect submitted the job.
"""

from __future__ import annotations

from typing import Any

from sdgate.core.jobs import Job, JobEventKind
from sdgate.server.dialect import Dialect
from sdgate.server.dialects.native import audit, cluster, controlnet, keys, router, translate, usage


class NativePayloads:
    """A job as ``GET /api/v1/jobs/{id}`` shows it; an event as its SSE stream sends it."""

    def job(self, job: Job, *, base: str) -> dict[str, Any]:
        return translate.job_out(job, base=base)

    def event(self, kind: JobEventKind, job: Job, *, base: str) -> dict[str, Any]:
        return translate.event_data(kind, job, base=base)


DIALECT = Dialect(
    name="native",
    routers=(router.router, cluster.router, keys.router, audit.router, usage.router, controlnet.router),
    job_payloads=NativePayloads(),
)
