"""The cluster end to end: ``sdgate api`` and ``sdgate worker`` processes over a real PostgreSQL and
a real S3 server (SeaweedFS), as an operator runs them (issue 15, "Tests").

1. 2 API nodes and 3 workers, 300 jobs through four dialects, ``kill -9`` of a worker in the middle
   of a job and of an API node: every job succeeds exactly once, its image is in the bucket and
   readable through either node, a job's SSE progress streams through the node that did not take
   it, and ``/metrics`` adds up.
2. PostgreSQL crashed and restarted (``pg_ctl stop -m immediate``) under load: the nodes reconnect,
   nothing accepted is lost, nothing succeeds twice.
3. S3 away for a while (dropped connections, then 503s): jobs fail ``storage_unavailable`` or
   succeed later, never succeed without their images; once S3 is back, new jobs succeed.

The workers: one runs the tiny random-weight model (``--engine diffusers`` on the CPU: about 0.2 s
per 64x64 job alone, 0.4 s when three such workers share this machine's two cores: too slow for 300
jobs in the time a test may take), the others ``--engine null``, which runs every part of a job
(claim, steps with progress and control, PNGs to S3, outcome and events) without drawing. The
real-model worker runs the first jobs, the followed one among them, then a long one, and is killed
in the middle of it.

Each test has its own database (made by ``sdgate db upgrade``) and its own key prefix in the test
bucket. Needs ``scripts/services.sh start`` (skipped without it, failed in CI): marked ``cluster``.
"""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import sqlalchemy as sa
from PIL import Image

from sdgate.jobs.schema import jobs, workers
from tests.cluster_clients import Clients, Clock, Submitter, follow, short
from tests.cluster_services import (
    PNG,
    TERMINAL,
    Cluster,
    Node,
    PrivatePostgres,
    all_ended,
    assert_each_succeeded_once,
    endings,
    image_ids,
    job_rows,
    metric,
    migrated_database,
    pg_bin,
    s3_key,
    upgrade,
    wait_for,
)
from tests.fakes import write_fake_checkpoint
from tests.jobs.conftest import PgServer, pg_server, services_required  # noqa: F401 - fixtures
from tests.jobs.s3server import S3Server, flaky_proxy, s3_bucket, s3_env, s3_prefix, s3_server  # noqa: F401

pytestmark = [pytest.mark.cluster, pytest.mark.slow]
LEASE_S = 3.0  # a killed worker's job runs again within seconds


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A models folder with one tiny random-weight SD 1.x checkpoint."""
    from tests import tinymodels as tm

    root = tmp_path_factory.mktemp("cluster-models")
    tm.save_single_file(tm.tiny_sd(0), "sd1", root / "Stable-diffusion" / "tiny-sd15.safetensors")
    return root


@pytest.fixture
def null_models(tmp_path: Path) -> Path:
    root = tmp_path / "models"
    write_fake_checkpoint(root / "Stable-diffusion" / "tiny.safetensors")
    return root


@pytest.fixture
def node_env(s3_env: S3Server, monkeypatch: pytest.MonkeyPatch) -> S3Server:  # noqa: F811
    """What every node inherits: the S3 credentials (s3_env), a short lease, none of the machine's
    own sdgate settings."""
    for name in ("SDGATE_DATABASE", "SDGATE_STORAGE", "SDGATE_DATA_DIR", "SDGATE_MODELS_DIR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SDGATE_JOB_LEASE_S", str(LEASE_S))
    return s3_env


@pytest.fixture
def clusters() -> Iterator[list[Cluster]]:
    """The clusters a test makes (``clusters.append(...)``): every node still running is killed at
    the end, and the nodes' last log lines printed (pytest shows them when the test failed)."""
    made: list[Cluster] = []
    yield made
    for cluster in made:
        cluster.stop_all()
        print(cluster.logs())


def worker_id_of(db: sa.Engine, node: Node) -> str | None:
    """The id a worker node registered under (its row in the worker registry names its pid)."""
    with db.connect() as conn:
        query = sa.select(workers.c.id).where(workers.c.pid == node.proc.pid)
        return conn.execute(query).scalar_one_or_none()


def runs_on(db: sa.Engine, job_id: str, worker_id: str) -> bool:
    """The job runs on that worker and has made a step."""
    with db.connect() as conn:
        row = conn.execute(sa.select(jobs).where(jobs.c.id == job_id)).one()
    return row.state == "running" and row.worker_id == worker_id and bool((row.progress or {}).get("step"))


# -- 1. the cluster under load, a worker and an API node killed ----------------------------------

TOTAL = 300
WARM_UP = 6  # short jobs the real-model worker runs before the long one
NATIVE_FIRST, ON_B_BEFORE_KILL, NATIVE_LAST = 130, 10, 98
DIALECTS = ("a1111", "openai", "stability")
BLOCKING_FIRST = 6  # per dialect and API node, before B is killed
BLOCKING_LAST = 6  # per dialect, on A after B was killed
LONG_STEPS = 1000  # about 40 s on the real-model worker: killed long before the end


def test_two_api_nodes_three_workers_300_jobs(
    tmp_path: Path, node_env: S3Server, pg_server: PgServer, s3_bucket: str, s3_prefix: str,  # noqa: F811
    tiny_models: Path, clusters: list[Cluster],
) -> None:
    blocking = len(DIALECTS) * (2 * BLOCKING_FIRST + BLOCKING_LAST)
    assert WARM_UP + 2 + NATIVE_FIRST + ON_B_BEFORE_KILL + NATIVE_LAST + blocking == TOTAL
    with migrated_database(pg_server) as url:
        db = sa.create_engine(url, poolclass=sa.NullPool)
        cluster = Cluster(tmp_path / "nodes", database=url, storage=f"s3://{s3_bucket}/{s3_prefix}",
                          endpoint=node_env.endpoint, models=tiny_models)
        clusters.append(cluster)
        try:
            run_300_jobs(cluster, db, node_env, s3_bucket, s3_prefix)
        finally:  # the nodes stop before their database is dropped
            cluster.stop_all()
            db.dispose()


def run_300_jobs(cluster: Cluster, db: sa.Engine, s3: S3Server, bucket: str, prefix: str) -> None:
    clock = Clock()
    a, b = cluster.api("api-a"), cluster.api("api-b")
    real = cluster.worker("worker-real", engine="diffusers")
    a.wait_ready(120)
    b.wait_ready(120)
    clients = Clients(a, b)
    model = httpx.get(a.url + "/api/v1/models").json()[0]["name"]
    clock("API nodes up")

    # 1. Before any worker is up: the real-model worker's first jobs, a job submitted on B whose
    #    SSE stream is followed through A, then a long one it will be killed in the middle of.
    native = [clients.native(short("warm", i), via=(a, b)[i % 2]) for i in range(WARM_UP)]
    followed = clients.native({**short("followed", 7), "steps": 12}, via=b)
    stream: list[dict[str, Any]] = []
    follower = threading.Thread(target=follow, args=(a.url, followed, stream), daemon=True)
    follower.start()
    long_job = clients.native({**short("long", 8), "steps": LONG_STEPS}, via=a)
    native += [followed, long_job]
    real.wait_ready(240)
    real_id = wait_for(lambda: worker_id_of(db, real), 30, "the real-model worker's registry row")
    wait_for(lambda: runs_on(db, long_job, real_id), 120, f"the long job running on {real_id}")
    clock("the real-model worker ran its first jobs and runs the long one")

    # 2. The null workers join; the bulk goes to both API nodes: native jobs, and the blocking
    #    dialects in threads (their clients wait for the image).
    nulls = [cluster.worker("worker-null-1"), cluster.worker("worker-null-2")]
    pool = ThreadPoolExecutor(8)
    first = [pool.submit(clients.native, short("bulk", i)) for i in range(NATIVE_FIRST)]
    waiting = [pool.submit(clients.blocking, d, node, model, i)
               for i in range(BLOCKING_FIRST) for d in DIALECTS for node in (a, b)]
    for node in nulls:
        node.wait_ready(120)
    clock("null workers up")

    # 3. kill -9 of the real-model worker in the middle of the long job: its lease must run out
    assert runs_on(db, long_job, real_id), "the long job ended before its worker could be killed"
    real_finished = metric(real.metrics(), "sdgate_jobs_finished_total", state="succeeded")
    real.kill()
    native += [f.result() for f in first]
    assert all(f.result().startswith(PNG) for f in waiting)
    clock("real-model worker killed; first bulk submitted")

    # 4. kill -9 of API node B: scraped, then a few more jobs (still queued when it dies). The
    #    clients' next requests to B fail over to A.
    b_submitted = metric(b.metrics(), "sdgate_jobs_submitted_total")
    native += [clients.native(short("on b", i), via=b) for i in range(ON_B_BEFORE_KILL)]
    b.kill()
    last = [pool.submit(clients.native, short("after", i)) for i in range(NATIVE_LAST)]
    waiting = [pool.submit(clients.blocking, d, a, model, 100 + i)
               for i in range(BLOCKING_LAST) for d in DIALECTS]
    native += [f.result() for f in last]
    assert all(f.result().startswith(PNG) for f in waiting)
    pool.shutdown()
    took_b = WARM_UP // 2 + 1 + BLOCKING_FIRST * len(DIALECTS) + NATIVE_FIRST // 2 + ON_B_BEFORE_KILL
    assert clients.accepted["api-b"] == took_b and clients.failovers >= NATIVE_LAST // 2 - 1, clients.accepted
    clock("API node B killed; everything submitted")
    b = cluster.restart(b)  # to read everything back through both nodes
    b.wait_ready(120)

    # 5. Every job ends, succeeded, exactly once
    wait_for(lambda: all_ended(db, TOTAL), 180, f"all {TOTAL} jobs to end")
    clock("all jobs ended")
    rows = job_rows(db)
    assert len(rows) == TOTAL and len(set(native)) == len(native) and set(native) <= set(rows)
    assert_each_succeeded_once(db, rows)
    per_dialect = {d: sum(1 for r in rows.values() if r.dialect == d) for d in ("native", *DIALECTS)}
    each = 2 * BLOCKING_FIRST + BLOCKING_LAST
    assert per_dialect == {"native": len(native), **dict.fromkeys(DIALECTS, each)}, per_dialect

    # the killed worker's long job ran again elsewhere once its lease expired; what it had finished
    # before stays finished
    assert rows[long_job].attempts == 2 and rows[long_job].worker_id != real_id
    assert endings(db)[long_job] == ["succeeded"]
    ran_real = sorted(i for i, r in rows.items() if r.worker_id == real_id)
    assert ran_real == sorted(native[:WARM_UP + 1]) and real_finished == len(ran_real)
    for job_id in ran_real:  # drawn by the model: not the null engine's black
        png = httpx.get(f"{a.url}/api/v1/images/{image_ids(rows[job_id])[0]}").content
        image = Image.open(io.BytesIO(png))
        assert image.size == (64, 64) and image.convert("L").getextrema() != (0, 0), job_id

    # 6. SSE through the node that did not take the job: its progress, then its one ending
    follower.join(60)
    kinds = [e["event"] for e in stream]
    assert clients.via[followed] == "api-b"
    assert "progress" in kinds and kinds[-1] == "succeeded" and kinds.count("succeeded") == 1, kinds
    steps = [e["data"]["step"] for e in stream if e["event"] == "progress"]
    assert steps == sorted(steps) and steps[-1] == 12, steps

    # 7. Every image: in the bucket, and the same PNG through either API node
    check_images(rows, (a, b), s3, bucket, prefix)
    clock("images checked")

    # 8. /metrics adds up: submissions over the API nodes (B's before it died), the queue, finishes
    a_metrics, b_metrics = a.metrics(), b.metrics()
    submitted = metric(a_metrics, "sdgate_jobs_submitted_total") + b_submitted + ON_B_BEFORE_KILL
    assert submitted == TOTAL, (submitted, clients.accepted)
    assert metric(b_metrics, "sdgate_jobs_submitted_total") == 0  # the restarted B took nothing
    for text in (a_metrics, b_metrics):
        assert metric(text, "sdgate_jobs", state="succeeded") == TOTAL
        assert metric(text, "sdgate_jobs", state="failed") == 0
    finished = [n.metrics() for n in nulls]
    succeeded = sum(metric(t, "sdgate_jobs_finished_total", state="succeeded") for t in finished)
    assert succeeded == TOTAL - len(ran_real), (succeeded, len(ran_real))
    assert sum(metric(t, "sdgate_jobs_finished_total", state="failed") for t in finished) == 0
    clients.close()


def check_images(
    rows: dict[str, Any], nodes: tuple[Node, ...], s3: S3Server, bucket: str, prefix: str
) -> None:
    """Each job's images are objects in the bucket, and PNGs through both API nodes."""
    keys = set(s3.keys(bucket, prefix + "/"))
    assert all(image_ids(row) for row in rows.values())
    stored = [image for row in rows.values() for image in image_ids(row)]
    missing = [image for image in stored if s3_key(prefix, image) not in keys]
    assert not missing, missing[:5]
    head = s3.client().head_object(Bucket=bucket, Key=s3_key(prefix, stored[0]))
    assert head["ContentType"] == "image/png"

    def read(item: tuple[int, str]) -> None:
        """The job from one node, its images from the other."""
        n, job_id = item
        one, other = nodes[n % 2], nodes[(n + 1) % 2]
        with httpx.Client(timeout=30) as http:
            job = http.get(f"{one.url}/api/v1/jobs/{job_id}").json()
            assert job["state"] == "succeeded", job
            for image in job["result"]["images"]:
                got = http.get(other.url + urlsplit(image["url"]).path)
                assert got.status_code == 200 and got.content.startswith(PNG), (other.name, job_id, got)

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(read, enumerate(sorted(rows))))


# -- 2. PostgreSQL crashed and restarted mid-run ---------------------------------------------------


def test_postgres_restart_loses_nothing(
    tmp_path: Path, node_env: S3Server, s3_bucket: str, s3_prefix: str, null_models: Path,  # noqa: F811
    clusters: list[Cluster],
) -> None:
    if pg_bin() is None:
        message = "no PostgreSQL server binaries (initdb, pg_ctl): run `scripts/services.sh start`"
        if services_required():
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    pg = PrivatePostgres()  # not the shared server: other tests run on that one
    try:
        pg.start()
        url = pg.create_database()
        upgrade(url)
        db = sa.create_engine(url, poolclass=sa.NullPool)
        cluster = Cluster(tmp_path / "nodes", database=url, storage=f"s3://{s3_bucket}/{s3_prefix}",
                          endpoint=node_env.endpoint, models=null_models)
        clusters.append(cluster)
        try:
            restart_postgres_under_load(cluster, pg, db)
        finally:  # the nodes stop before their database is dropped
            cluster.stop_all()
            db.dispose()
    finally:
        pg.close()


def restart_postgres_under_load(cluster: Cluster, pg: PrivatePostgres, db: sa.Engine) -> None:
    api = cluster.api("api")
    nodes = [api, cluster.worker("worker-1"), cluster.worker("worker-2")]
    for node in nodes:
        node.wait_ready(120)
    client = Submitter(api.url)
    client.start()
    wait_for(lambda: client.check(20), 60, "20 jobs before the restart")
    pg.stop("immediate")  # a crash: no session is told
    time.sleep(3)
    pg.start()
    restarted = len(client.accepted)
    # a submit the crash cut between claiming its key and recording its job retries for up to
    # idempotency.PENDING_WAIT_S before it takes the abandoned claim over
    wait_for(lambda: client.check(restarted + 20), 90, "20 jobs accepted after the restart")
    client.stopping.set()
    client.join(90)
    assert not client.is_alive() and client.error is None, client.error
    assert client.refused and set(client.refused) == {"storage_unavailable"}, client.refused

    accepted = client.accepted
    wait_for(lambda: all_ended(db, len(accepted)), 120, f"all {len(accepted)} jobs to end")
    rows = job_rows(db)
    assert sorted(rows) == sorted(set(accepted)) and len(set(accepted)) == len(accepted)
    assert_each_succeeded_once(db, rows)
    for node in nodes:  # every node is back
        assert node.proc.poll() is None, node.name
        assert httpx.get(node.url + "/readyz", timeout=10).status_code == 200, node.name
    # and the API node follows the outbox again: a new job's events stream to its end
    job_id = httpx.post(api.url + "/api/v1/jobs", json=short("streamed", 1), timeout=30).json()["id"]
    stream: list[dict[str, Any]] = []
    follow(api.url, job_id, stream)
    assert [e["event"] for e in stream][-1] == "succeeded", stream


# -- 3. S3 away for a while ------------------------------------------------------------------------


def test_s3_outage_never_succeeds_without_images(
    tmp_path: Path, node_env: S3Server, pg_server: PgServer, s3_bucket: str, s3_prefix: str,  # noqa: F811
    null_models: Path, clusters: list[Cluster],
) -> None:
    with migrated_database(pg_server) as url, flaky_proxy(node_env.endpoint) as proxy:
        db = sa.create_engine(url, poolclass=sa.NullPool)
        cluster = Cluster(tmp_path / "nodes", database=url, storage=f"s3://{s3_bucket}/{s3_prefix}",
                          endpoint=proxy.endpoint, models=null_models)
        clusters.append(cluster)
        api, worker = cluster.api("api"), cluster.worker("worker")
        try:
            api.wait_ready(120)
            worker.wait_ready(120)
            with httpx.Client(base_url=api.url, timeout=60) as http:
                s3_outage(http, worker, proxy)
                check_no_success_without_images(http, db, node_env, s3_bucket, s3_prefix)
            assert worker.proc.poll() is None and api.proc.poll() is None
        finally:  # the nodes stop before their database is dropped
            cluster.stop_all()
            db.dispose()


def s3_outage(http: httpx.Client, worker: Node, proxy: Any) -> None:
    def submit(n: int) -> str:
        r = http.post("/api/v1/jobs", json=short("job", n))
        assert r.status_code == 202, r.text
        return str(r.json()["id"])

    def ended(job_id: str) -> dict[str, Any]:
        def check() -> dict[str, Any] | None:
            job: dict[str, Any] = http.get(f"/api/v1/jobs/{job_id}").json()
            return job if job["state"] in TERMINAL else None

        return wait_for(check, 60, f"job {job_id} to end")

    before = [ended(submit(n)) for n in range(5)]
    assert all(job["state"] == "succeeded" for job in before)
    stored = before[0]["result"]["images"][0]["url"]
    during: list[dict[str, Any]] = []
    for n, outage in enumerate((proxy.down, proxy.answer_503)):
        outage()
        during += [ended(j) for j in [submit(100 + 10 * n + i) for i in range(5)]]
        ready = httpx.get(worker.url + "/readyz", timeout=30)
        assert ready.status_code == 503, ready.text
        # through the API node: the stored image is unavailable for now (a 503 to retry, not a
        # 500, not a 404), and a blocking dialect answers the failed job's error (507, as stored)
        image = http.get(stored)
        assert image.status_code == 503 and image.json()["error"]["code"] == "storage_unavailable", image.text
        a1111 = http.post("/sdapi/v1/txt2img", json=short("a1111", 300 + n))
        assert a1111.status_code == 507, a1111.text
    proxy.up()
    wait_for(lambda: httpx.get(worker.url + "/readyz", timeout=30).status_code == 200, 60, "the worker ready")
    assert all(ended(submit(n))["state"] == "succeeded" for n in range(200, 205))
    for job in during:  # failed with a clear error, or succeeded (checked below: with its images)
        assert job["state"] in ("failed", "succeeded"), job
        if job["state"] == "failed":
            error = job["error"]
            assert error["code"] == "storage_unavailable" and "sdgate-test-" in error["message"], job
    assert any(j["state"] == "failed" for j in during)  # the outage was seen


def check_no_success_without_images(
    http: httpx.Client, db: sa.Engine, s3: S3Server, bucket: str, prefix: str
) -> None:
    rows = job_rows(db)
    keys = set(s3.keys(bucket, prefix + "/"))
    for job_id, row in rows.items():
        if row.state != "succeeded":
            continue
        assert image_ids(row), job_id
        for image in image_ids(row):
            assert s3_key(prefix, image) in keys, (job_id, image)
            got = http.get(f"/api/v1/images/{image}")
            assert got.status_code == 200 and got.content.startswith(PNG)
    assert endings(db) == {job_id: [row.state] for job_id, row in rows.items()}  # each ended once
