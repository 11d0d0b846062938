"""``/metrics`` on a live server: requests by dialect, route template and status; jobs submitted
by dialect and finished by state; the queue by state, read from the store at scrape time."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from sdgate.server.app import create_app
from sdgate.settings import Settings
from tests.harness import ThreadServer


def _scrape(url: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    r = httpx.get(url + "/metrics", timeout=10)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    out = {}
    for family in text_string_to_metric_families(r.text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def _value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def test_metrics_count_requests_jobs_and_queue(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, engine="null", models_dir=tmp_path / "models")
    with ThreadServer(create_app(settings)) as server, httpx.Client(base_url=server.url, timeout=30) as c:
        for _ in range(3):
            body = {"prompt": "a red circle", "steps": 2, "width": 64, "height": 64}
            r = c.post("/sdapi/v1/txt2img", json=body)
            assert r.status_code == 200, r.text
        r = c.post("/api/v1/jobs", json={"prompt": "a blue square", "steps": 2, "width": 64, "height": 64})
        assert r.status_code in (200, 201, 202), r.text
        job_id = r.json()["id"]
        assert c.get("/api/v1/jobs/nope").status_code == 404
        assert c.get("/sdapi/v1/txt2img").status_code == 405
        assert c.get("/no/such/path").status_code == 404
        deadline = time.monotonic() + 30
        while c.get(f"/api/v1/jobs/{job_id}").json()["state"] != "succeeded":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        time.sleep(0.2)  # the worker records its metrics right after the job's last write

        s = _scrape(server.url)
        assert _value(s, "sdgate_http_requests_total", dialect="a1111", route="/sdapi/v1/txt2img",
                      method="POST", status="200") == 3
        assert _value(s, "sdgate_http_requests_total", dialect="a1111", route="/sdapi/v1/txt2img",
                      method="GET", status="405") == 1
        assert _value(s, "sdgate_http_requests_total", dialect="native", route="/api/v1/jobs/{job_id}",
                      method="GET", status="404") == 1
        assert _value(s, "sdgate_http_requests_total", dialect="none", route="<unmatched>",
                      method="GET", status="404") == 1
        assert _value(s, "sdgate_jobs_submitted_total", dialect="a1111") == 3
        assert _value(s, "sdgate_jobs_submitted_total", dialect="native") == 1
        assert _value(s, "sdgate_jobs_finished_total", state="succeeded", error="") == 4
        model = c.get("/sdapi/v1/options").json()["sd_model_checkpoint"].split(" ")[0]
        assert _value(s, "sdgate_images_generated_total", model=model) == 4
        assert _value(s, "sdgate_steps_total") == 8
        assert _value(s, "sdgate_job_run_seconds_count", model=model, size="0.25MP") == 4
        assert _value(s, "sdgate_job_queue_wait_seconds_count", model=model, size="0.25MP") == 4
        assert _value(s, "sdgate_jobs", state="succeeded") == 4
        assert _value(s, "sdgate_jobs", state="queued") == 0
        # no route id leaks into a label: the template names the route
        assert not any("nope" in v for _, labels in s for _, v in labels)
