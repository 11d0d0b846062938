"""ComfyUI over a cluster: two ``sdgate api`` nodes and a null worker over PostgreSQL and S3. A file
uploaded to one API node is loaded by a prompt posted to the other, whose events reach the socket
held by the first (LISTEN/NOTIFY), and whose output the first serves from S3. Needs
``scripts/services.sh start`` (skipped without it, failed in CI)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from tests import comfy_graphs
from tests.cluster_services import Cluster, migrated_database
from tests.fakes import write_fake_checkpoint
from tests.jobs.conftest import PgServer, pg_server  # noqa: F401 - fixtures
from tests.jobs.s3server import S3Server, s3_bucket, s3_env, s3_prefix, s3_server  # noqa: F401
from tests.server.dialects.comfy.conftest import ComfyScript

pytestmark = [pytest.mark.cluster, pytest.mark.slow]
CKPT = "tiny.safetensors"


@pytest.fixture
def cluster(
    tmp_path: Path,
    pg_server: PgServer,  # noqa: F811
    s3_env: S3Server,  # noqa: F811
    s3_bucket: str,  # noqa: F811
    s3_prefix: str,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Cluster]:
    for name in ("SDGATE_DATABASE", "SDGATE_STORAGE", "SDGATE_DATA_DIR", "SDGATE_MODELS_DIR"):
        monkeypatch.delenv(name, raising=False)
    models = tmp_path / "models"
    write_fake_checkpoint(models / "checkpoints" / CKPT)
    with migrated_database(pg_server) as url:
        made = Cluster(tmp_path / "nodes", database=url, storage=f"s3://{s3_bucket}/{s3_prefix}",
                       endpoint=s3_env.endpoint, models=models)
        try:
            yield made
        finally:
            made.stop_all()
            print(made.logs())


def test_upload_on_one_node_prompt_on_another_events_and_view_across(cluster: Cluster) -> None:
    a, b, worker = cluster.api("api-a"), cluster.api("api-b"), cluster.worker("worker")
    for node in (a, b, worker):
        node.wait_ready(120)
    on_a, on_b = ComfyScript(a.url, client_id="c1"), ComfyScript(b.url, client_id="c1")
    name = on_a.upload(Image.new("RGB", (64, 64), "red"), "in.png").json()["name"]
    ws = on_a.connect()
    try:
        r = on_b.queue_prompt(comfy_graphs.img2img(CKPT, name, steps=3))
        assert r.status_code == 200, r.text
        run = on_a.wait(ws, r.json()["prompt_id"])
    finally:
        ws.close()
    assert run.of("execution_start") and run.of("execution_success")
    assert [d["value"] for d in run.of("progress") if d["node"] == "3"][-1] == 3
    [picture] = on_a.images(run.prompt_id)
    assert picture.size == (64, 64)
    assert on_b.images(run.prompt_id)[0].size == (64, 64)
