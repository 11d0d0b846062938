"""The metrics of one process: bounded labels, counters that add up, collectors read at scrape."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from sdgate.metrics import Metrics, size_class


def _samples(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(metrics.render().decode()):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


@pytest.mark.parametrize(
    ("w", "h", "expected"),
    [(512, 512, "0.25MP"), (513, 512, "0.5MP"), (1024, 1024, "1MP"), (1024, 1025, "2MP"),
     (2048, 2048, "4MP"), (4096, 4096, ">4MP"), (0, 0, "0.25MP"), (-5, 10, "0.25MP")],
)
def test_size_class(w: int, h: int, expected: str) -> None:
    assert size_class(w, h) == expected


def test_job_finished_counts_and_observes() -> None:
    m = Metrics()
    m.job_finished(state="succeeded", error=None, model="demo", width=512, height=512,
                   waited_s=0.02, ran_s=2.0, steps=20, images=2, worker="w1")
    m.job_finished(state="failed", error="out_of_memory", model="demo", width=1024, height=1024,
                   waited_s=None, ran_s=1.0, worker="w1")
    s = _samples(m)
    assert s[("sdgate_jobs_finished_total", (("error", ""), ("state", "succeeded")))] == 1
    assert s[("sdgate_jobs_finished_total", (("error", "out_of_memory"), ("state", "failed")))] == 1
    assert s[("sdgate_steps_total", ())] == 20
    assert s[("sdgate_images_generated_total", (("model", "demo"),))] == 2
    assert s[("sdgate_worker_steps_per_second", (("worker", "w1"),))] == 10.0
    assert s[("sdgate_job_queue_wait_seconds_count", (("model", "demo"), ("size", "0.25MP")))] == 1
    # the failed job had no wait recorded, but its run time was
    assert ("sdgate_job_queue_wait_seconds_count", (("model", "demo"), ("size", "1MP"))) not in s
    assert s[("sdgate_job_run_seconds_count", (("model", "demo"), ("size", "1MP")))] == 1


def test_registries_are_per_process_object() -> None:
    a, b = Metrics(), Metrics()
    a.jobs_submitted.labels("a1111").inc()
    assert ("sdgate_jobs_submitted_total", (("dialect", "a1111"),)) in _samples(a)
    assert ("sdgate_jobs_submitted_total", (("dialect", "a1111"),)) not in _samples(b)


def test_queue_collector_reads_at_scrape_and_survives_a_dead_store() -> None:
    counts = {"queued": 3, "running": 1}
    m = Metrics()
    m.watch_queue(lambda: counts)
    assert _samples(m)[("sdgate_jobs", (("state", "queued"),))] == 3
    counts["queued"] = 7
    assert _samples(m)[("sdgate_jobs", (("state", "queued"),))] == 7

    def broken() -> dict[str, int]:
        raise OSError("database gone")

    m2 = Metrics()
    m2.watch_queue(broken)
    assert not any(name == "sdgate_jobs" for name, _ in _samples(m2))  # answers, without the family


def test_gpu_collector_flattens_and_drops_non_numbers() -> None:
    m = Metrics()
    m.watch_gpu(lambda: {"system": {"free": 10.0, "used": 5, "total": 15}, "active": {"peak": float("nan")},
                         "note": "x", "flag": True}, "cuda:0")
    s = _samples(m)
    assert s[("sdgate_gpu_memory_bytes", (("device", "cuda:0"), ("kind", "system_free")))] == 10.0
    assert s[("sdgate_gpu_memory_bytes", (("device", "cuda:0"), ("kind", "system_total")))] == 15.0
    kinds = {dict(labels)["kind"] for name, labels in s if name == "sdgate_gpu_memory_bytes"}
    assert kinds == {"system_free", "system_used", "system_total"}


def test_heartbeat_sets_time() -> None:
    m = Metrics()
    m.heartbeat("w1")
    m.heartbeat("w1")
    s = _samples(m)
    assert s[("sdgate_worker_heartbeats_total", (("worker", "w1"),))] == 2
    assert s[("sdgate_worker_last_heartbeat_timestamp_seconds", (("worker", "w1"),))] > 1.7e9
