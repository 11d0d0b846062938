"""Prometheus metrics of one sdgate process (an API node, a worker, or both in ``sdgate serve``).

Each process builds one ``Metrics`` (its own ``CollectorRegistry``, so two apps in one test process
never share counters) and serves it at ``/metrics`` in the Prometheus text format. What is counted
where:

- API nodes: HTTP requests by dialect, route template and status, with their latency; jobs
  submitted by dialect; webhook deliveries by outcome; the queue depth by state (read from the job
  store at each scrape, so every node shows the cluster's queue).
- Workers: jobs finished by state and error code; queue wait (submit to claim) and run time
  (claim to finish) by model and size class; steps and images generated; steps per second of the
  last job; heartbeats and the time of the last one; GPU memory where the engine has a GPU.

Labels are bounded: a route is its template (``/api/v1/jobs/{job_id}``, never the id), a size is a
class of megapixels (``0.25MP`` .. ``4MP``, ``>4MP``), a model is a name the catalog offers, an
error code one of ``core.errors``' codes. Torch-free; the GPU collector asks the engine.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

disable_created_metrics()  # no ``*_created`` series: they double every scrape and nobody graphs them

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
UNMATCHED_ROUTE = "<unmatched>"
# Seconds: from a few ms (the null engine, a cache hit) to many minutes (a big batch on a CPU).
JOB_SECONDS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)
HTTP_SECONDS_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_SIZE_CLASSES = (0.25, 0.5, 1.0, 2.0, 4.0)  # megapixels
# Why a per-principal limit refused a request: the error codes of the 429s it answers.
REFUSAL_REASONS = ("rate_limited", "quota_exceeded", "too_many_jobs")


def size_class(width: int, height: int) -> str:
    """``"1MP"`` for 1024x1024: the smallest class that holds ``width * height`` pixels."""
    mp = max(0, width) * max(0, height) / 2**20
    for bound in _SIZE_CLASSES:
        if mp <= bound:
            return f"{bound:g}MP"
    return f">{_SIZE_CLASSES[-1]:g}MP"


class _QueueCollector(Collector):
    """``sdgate_jobs{state}``: jobs in the store by state, read at scrape time."""

    def __init__(self, count: Callable[[], Mapping[str, int]]) -> None:
        self._count = count

    def collect(self) -> Iterable[Metric]:
        family = GaugeMetricFamily("sdgate_jobs", "Jobs in the store by state.", labels=["state"])
        try:
            counts = self._count()
        except Exception:  # noqa: BLE001 - a scrape must answer while the database is away
            counts = {}
        for state, n in sorted(counts.items()):
            family.add_metric([state], n)
        yield family


class _GpuCollector(Collector):
    """``sdgate_gpu_memory_bytes{device,kind}`` from the engine's ``memory_stats()`` (CUDA only)."""

    def __init__(self, stats: Callable[[], Mapping[str, Any] | None], device: str) -> None:
        self._stats = stats
        self._device = device

    def collect(self) -> Iterable[Metric]:
        family = GaugeMetricFamily(
            "sdgate_gpu_memory_bytes", "GPU memory by kind (free, used, total; torch's allocated).",
            labels=["device", "kind"],
        )
        try:
            stats = self._stats() or {}
        except Exception:  # noqa: BLE001 - a scrape must answer while the device is busy
            stats = {}
        for kind, value in _flatten(stats):
            family.add_metric([self._device, kind], value)
        yield family


def _flatten(stats: Mapping[str, Any], prefix: str = "") -> Iterable[tuple[str, float]]:
    """A1111's ``/memory`` ``cuda`` shape (``{"system": {"free": ..}, "active": {"current": ..}}``)
    as ``("system_free", n)`` pairs; only finite numbers."""
    for key, value in stats.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            yield from _flatten(value, f"{name}_")
        elif isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
            yield name, float(value)


class Metrics:
    """Every metric of one process, in one registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.http_requests = Counter(
            "sdgate_http_requests", "HTTP requests by dialect, route template, method and status.",
            ["dialect", "route", "method", "status"], registry=r,
        )
        self.http_seconds = Histogram(
            "sdgate_http_request_seconds", "HTTP request latency (to the last body byte).",
            ["dialect", "route"], buckets=HTTP_SECONDS_BUCKETS, registry=r,
        )
        self.jobs_submitted = Counter(
            "sdgate_jobs_submitted", "Jobs submitted through this node, by dialect.", ["dialect"], registry=r,
        )
        self.jobs_finished = Counter(
            "sdgate_jobs_finished", "Jobs finished by this node's workers, by state and error code.",
            ["state", "error"], registry=r,
        )
        self.queue_wait = Histogram(
            "sdgate_job_queue_wait_seconds", "From submit to claim, by model and size class.",
            ["model", "size"], buckets=JOB_SECONDS_BUCKETS, registry=r,
        )
        self.run_time = Histogram(
            "sdgate_job_run_seconds", "From claim to the job's end, by model and size class.",
            ["model", "size"], buckets=JOB_SECONDS_BUCKETS, registry=r,
        )
        self.steps = Counter("sdgate_steps", "Denoising steps run by this node's workers.", registry=r)
        self.images = Counter(
            "sdgate_images_generated", "Images generated by this node's workers, by model.", ["model"],
            registry=r,
        )
        self.steps_per_second = Gauge(
            "sdgate_worker_steps_per_second", "Steps per second of each worker's last job.", ["worker"],
            registry=r,
        )
        self.heartbeats = Counter(
            "sdgate_worker_heartbeats", "Lease heartbeats sent by each worker.", ["worker"], registry=r,
        )
        self.last_heartbeat = Gauge(
            "sdgate_worker_last_heartbeat_timestamp_seconds", "Unix time of each worker's last heartbeat.",
            ["worker"], registry=r,
        )
        self.webhook_deliveries = Counter(
            "sdgate_webhook_deliveries", "Webhook delivery attempts by outcome (delivered, retry, failed).",
            ["outcome"], registry=r,
        )
        self.content_filtered = Counter(
            "sdgate_content_filtered", "Requests (stage prompt) and images (stage image) the content "
            "filter refused, by dialect.", ["stage", "dialect"], registry=r,
        )
        self.refusals = Counter(
            "sdgate_refusals", "Requests refused by a per-principal limit, by reason (rate_limited, "
            "quota_exceeded, too_many_jobs).", ["reason"], registry=r,
        )
        for reason in REFUSAL_REASONS:  # each reason's series shows 0 before the first refusal
            self.refusals.labels(reason)

    # -- collectors read at scrape time --------------------------------------------------------

    def watch_queue(self, count_by_state: Callable[[], Mapping[str, int]]) -> None:
        self.registry.register(_QueueCollector(count_by_state))

    def watch_gpu(self, memory_stats: Callable[[], Mapping[str, Any] | None], device: str) -> None:
        self.registry.register(_GpuCollector(memory_stats, device))

    # -- what callers record ---------------------------------------------------------------

    def job_finished(
        self,
        *,
        state: str,
        error: str | None,
        model: str,
        width: int,
        height: int,
        waited_s: float | None,
        ran_s: float | None,
        steps: int = 0,
        images: int = 0,
        worker: str | None = None,
    ) -> None:
        size = size_class(width, height)
        self.jobs_finished.labels(state, error or "").inc()
        # A wait below zero is two clocks (the submitting node's, the claiming one's) or a claim whose
        # time was taken just before the job was inserted: it waited no time, and still counts.
        if waited_s is not None:
            self.queue_wait.labels(model, size).observe(max(0.0, waited_s))
        if ran_s is not None:
            self.run_time.labels(model, size).observe(max(0.0, ran_s))
        if steps > 0:
            self.steps.inc(steps)
            if worker is not None and ran_s:
                self.steps_per_second.labels(worker).set(steps / ran_s)
        if images > 0:
            self.images.labels(model).inc(images)

    def heartbeat(self, worker: str) -> None:
        self.heartbeats.labels(worker).inc()
        self.last_heartbeat.labels(worker).set(time.time())

    def render(self) -> bytes:
        return generate_latest(self.registry)
