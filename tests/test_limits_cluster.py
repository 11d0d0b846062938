"""Limits hold across API nodes (issue 16): two ``sdgate api`` processes on one PostgreSQL share
each key's request-rate bucket and its images of the day, so a key cannot get twice its limit by
spreading its calls over the nodes. The keys are made in the database before the nodes start
(``--auth auto`` turns keys on when one exists). No worker runs: the jobs stay queued, which is all
the quotas count. Needs ``scripts/services.sh start`` (skipped without it, failed in CI).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from sdgate.jobs.database import create_db_engine
from sdgate.jobs.keys import KeyLimits, KeyStore
from tests.cluster_services import metric, migrated_database
from tests.fakes import write_fake_checkpoint
from tests.harness import ProcessServer, free_port
from tests.jobs.conftest import PgServer, pg_server, services_required  # noqa: F401 - fixtures

pytestmark = [pytest.mark.cluster, pytest.mark.slow]
JOB = {"prompt": "x", "steps": 1, "width": 64, "height": 64}


@pytest.fixture
def database(pg_server: PgServer) -> Iterator[str]:  # noqa: F811 - the fixture imported above
    with migrated_database(pg_server) as url:
        yield url


def logs(nodes: tuple[ProcessServer, ...]) -> str:
    return "\n".join(f"--- {n.log.name} ---\n{n.log.read_text(errors='replace')[-4000:]}" for n in nodes)


def metrics_of(node: ProcessServer, auth: dict[str, str]) -> str:
    response = httpx.get(node.url + "/metrics", headers=auth, timeout=30)  # not public: keys are on
    assert response.status_code == 200, response.text[:300]
    return response.text


def make_key(url: str, name: str, limits: KeyLimits) -> str:
    engine = create_db_engine(url)
    try:
        return KeyStore(engine).create(name, scopes=("generate", "read"), limits=limits).secret
    finally:
        engine.dispose()


@pytest.fixture
def nodes(database: str, tmp_path: Path) -> Iterator[tuple[ProcessServer, ProcessServer]]:
    models, images = tmp_path / "models", tmp_path / "images"
    write_fake_checkpoint(models / "Stable-diffusion" / "fake.safetensors")
    started: list[ProcessServer] = []
    try:
        for name in ("api1", "api2"):
            port = free_port()
            args = [sys.executable, "-m", "sdgate", "api", "--port", str(port), "--data-dir",
                    str(tmp_path / name), "--database", database, "--storage", str(images),
                    "--models-dir", str(models), "--log-level", "warning"]
            started.append(ProcessServer(args, port, tmp_path / f"{name}.log"))
        yield started[0], started[1]
    finally:
        for node in reversed(started):
            node.stop()


@pytest.fixture
def keys(database: str) -> dict[str, str]:
    """Made before the nodes start, so both run with keys on from their first request."""
    return {
        "images": make_key(database, "five-a-day", KeyLimits(images_per_day=5)),
        # One request a minute after a burst of four: nothing refills while the test runs.
        "rate": make_key(database, "four-then-slow", KeyLimits(rate_per_min=1, rate_burst=4)),
    }


def test_images_per_day_hold_across_two_api_nodes(
    keys: dict[str, str], nodes: tuple[ProcessServer, ProcessServer]
) -> None:
    auth = {"Authorization": f"Bearer {keys['images']}"}
    first, second = nodes

    def submit(node: ProcessServer) -> httpx.Response:
        return httpx.post(node.url + "/api/v1/jobs", json=JOB, headers=auth, timeout=30)

    # Three through each node, all at once: five fit in the day's five images, one does not.
    with ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(submit, [first, second] * 3))
    statuses = sorted(r.status_code for r in answers)
    assert statuses == [202] * 5 + [429], ([(r.status_code, r.text[:200]) for r in answers], logs(nodes))
    (refused,) = [r for r in answers if r.status_code == 429]
    assert refused.json()["error"]["code"] == "quota_exceeded"
    assert "5 of 5" in refused.json()["error"]["message"]
    assert 1 <= int(refused.headers["retry-after"]) <= 86400
    # Either node tells the same story.
    for node in nodes:
        me = httpx.get(node.url + "/api/v1/me", headers=auth, timeout=30).json()
        assert (me["usage"]["images"], me["usage"]["images_left"]) == (5, 0), me
        assert httpx.get(node.url + "/v1/user/balance", headers=auth, timeout=30).json() == {"credits": 0.0}
        assert submit(node).status_code == 429
    refusals = sum(metric(metrics_of(n, auth), "sdgate_refusals_total", reason="quota_exceeded")
                   for n in nodes)
    assert refusals == 3


def test_the_request_rate_holds_across_two_api_nodes(
    keys: dict[str, str], nodes: tuple[ProcessServer, ProcessServer]
) -> None:
    auth = {"Authorization": f"Bearer {keys['rate']}"}
    first, second = nodes
    calls = [first, second, first, second, first, second]
    answers = [httpx.get(node.url + "/api/v1/jobs", headers=auth, timeout=30) for node in calls]
    assert [r.status_code for r in answers] == [200] * 4 + [429, 429], ([r.text[:200] for r in answers],
                                                                         logs(nodes))
    for refused in answers[4:]:
        assert refused.json()["error"]["code"] == "rate_limited"
        assert 50 <= int(refused.headers["retry-after"]) <= 60  # one a minute
    # Another dialect on the other node draws on the same bucket.
    openai = httpx.get(second.url + "/v1/models", headers=auth, timeout=30)
    assert openai.status_code == 429 and openai.json()["error"]["code"] == "rate_limit_exceeded"
    # A key without a rate limit is not slowed by it.
    other = {"Authorization": f"Bearer {keys['images']}"}
    assert all(httpx.get(first.url + "/api/v1/jobs", headers=other, timeout=30).status_code == 200
               for _ in range(6))
    refusals = sum(metric(metrics_of(n, other), "sdgate_refusals_total", reason="rate_limited")
                   for n in nodes)
    assert refusals == 3
