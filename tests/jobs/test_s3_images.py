"""``S3ImageStore`` against a real S3-compatible server (SeaweedFS from ``scripts/services.sh``).

What every image store does (round trips, one id for the same bytes, missing ids, concurrent puts)
is tested over both stores in test_image_store.py; here is what is S3's own: keys and
Content-Type, the start-up check, presigned links, the endpoint settings, a server that stops,
answers 503 or hangs, and ``sdgate serve --storage s3://...`` end to end.
"""

from __future__ import annotations

import base64
import io
import os
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from sdgate.core.errors import NotFound, StorageUnavailable
from sdgate.jobs.factory import StoreLocationError, image_store, open_stores
from sdgate.jobs.images import image_id
from sdgate.jobs.s3images import S3ImageStore, parse_s3_url
from tests.harness import ProcessServer, free_port
from tests.jobs.s3server import S3Server, flaky_proxy, s3_bucket, s3_env, s3_images, s3_prefix, s3_server

__all__ = ["s3_bucket", "s3_env", "s3_images", "s3_prefix", "s3_server"]  # fixtures

PNG = b"\x89PNG\r\n\x1a\n" + b"pretend" * 10
cluster = pytest.mark.cluster


def count_requests(store: S3ImageStore) -> dict[str, int]:
    """Requests ``store`` sends from now on, by operation (botocore's own event hooks)."""
    seen: dict[str, int] = {}

    def before_call(model: Any, **_: Any) -> None:
        seen[model.name] = seen.get(model.name, 0) + 1

    store._client.meta.events.register("before-call.s3", before_call)
    return seen


# -- locations (no server) -------------------------------------------------------------------------


def test_s3_urls_name_a_bucket_and_a_prefix() -> None:
    assert parse_s3_url("s3://images") == ("images", "")
    assert parse_s3_url("s3://my.images-1/a/b/") == ("my.images-1", "a/b")
    for bad in ["s3://", "s3://ab", "s3://Images", "s3://under_score/x", "s3://-dash", "s3://" + "b" * 64,
                "s3://bucket/x?endpoint=http://evil", "s3://bucket/x#y"]:
        with pytest.raises(StoreLocationError, match="not an S3 location"):
            parse_s3_url(bad)
        with pytest.raises(StoreLocationError):
            image_store(bad)


# -- keys, types, requests -------------------------------------------------------------------------


@cluster
def test_keys_are_sharded_under_the_prefix_with_their_content_type(
    s3_images: S3ImageStore, s3_server: S3Server, s3_bucket: str, s3_prefix: str
) -> None:
    png_id = s3_images.put(PNG)
    jpeg_id = s3_images.put(b"\xff\xd8\xff fake jpeg", content_type="image/jpeg")
    expected = {
        f"{s3_prefix}/{png_id[4:6]}/{png_id[6:8]}/{png_id}.png": "image/png",
        f"{s3_prefix}/{jpeg_id[4:6]}/{jpeg_id[6:8]}/{jpeg_id}.jpg": "image/jpeg",
    }
    assert s3_server.keys(s3_bucket, s3_prefix) == sorted(expected)
    admin = s3_server.client()
    for key, content_type in expected.items():
        assert admin.head_object(Bucket=s3_bucket, Key=key)["ContentType"] == content_type
    assert s3_images.content_type(jpeg_id) == "image/jpeg"
    assert s3_images.get(jpeg_id) == b"\xff\xd8\xff fake jpeg"


@cluster
def test_putting_stored_bytes_again_writes_nothing(s3_images: S3ImageStore) -> None:
    first = s3_images.put(PNG)
    requests = count_requests(s3_images)
    assert s3_images.put(PNG) == first
    assert requests == {"HeadObject": 1}


@cluster
def test_a_png_is_read_with_one_request_and_bad_ids_send_none(s3_images: S3ImageStore) -> None:
    stored = s3_images.put(PNG)
    requests = count_requests(s3_images)
    assert s3_images.get(stored) == PNG
    assert requests == {"GetObject": 1}
    requests.clear()
    for bad in ["img_../../etc/passwd", "img_" + "A" * 24, "../" + stored, stored + "/../x", ""]:
        assert not s3_images.exists(bad)
        with pytest.raises(NotFound):
            s3_images.get(bad)
        with pytest.raises(NotFound):
            s3_images.content_type(bad)
        s3_images.delete(bad)
    assert requests == {}


@cluster
def test_delete_removes_the_image_whatever_types_it_was_stored_as(
    s3_images: S3ImageStore, s3_server: S3Server, s3_bucket: str, s3_prefix: str
) -> None:
    as_png = s3_images.put(PNG)
    assert s3_images.put(PNG, content_type="image/webp") == as_png  # the same bytes, claimed twice
    s3_images.delete(as_png)
    assert not s3_images.exists(as_png)
    assert s3_server.keys(s3_bucket, s3_prefix) == []


# -- presigned links -------------------------------------------------------------------------------


@cluster
def test_a_presigned_url_fetches_the_image_without_credentials(s3_images: S3ImageStore) -> None:
    stored = s3_images.put(PNG)
    url = s3_images.presigned_url(stored, ttl_s=60)
    assert "X-Amz-Signature=" in url and "X-Amz-Expires=60" in url
    response = httpx.get(url)  # no credentials, no boto3
    assert response.status_code == 200
    assert response.content == PNG
    assert response.headers["content-type"] == "image/png"
    tampered = url.replace(stored, s3_images.put(PNG + b"other"))
    assert httpx.get(tampered).status_code == 403
    with pytest.raises(NotFound):
        s3_images.presigned_url("img_" + "0" * 24, ttl_s=60)
    for ttl in (0, -1, 8 * 24 * 3600):
        with pytest.raises(ValueError, match="ttl_s"):
            s3_images.presigned_url(stored, ttl_s=ttl)


# -- start-up and endpoint settings ----------------------------------------------------------------


@cluster
def test_a_missing_bucket_is_one_line_naming_it_unless_asked_to_create_it(s3_env: S3Server) -> None:
    bucket = f"sdgate-missing-{os.getpid()}-{time.monotonic_ns() % 10**9}"
    with pytest.raises(StorageUnavailable) as caught:
        S3ImageStore.from_url(f"s3://{bucket}/x", endpoint=s3_env.endpoint)
    message = caught.value.message
    assert bucket in message and s3_env.endpoint in message and "does not exist" in message
    assert "\n" not in message
    try:
        store = S3ImageStore.from_url(f"s3://{bucket}/x", endpoint=s3_env.endpoint, create_bucket=True)
        assert store.get(store.put(PNG)) == PNG
    finally:
        s3_env.remove_bucket(bucket)


@cluster
def test_unreachable_s3_at_start_names_the_endpoint_and_bucket(s3_env: S3Server, s3_bucket: str) -> None:
    closed = f"http://127.0.0.1:{free_port()}"
    started = time.monotonic()
    with pytest.raises(StorageUnavailable) as caught:
        image_store(f"s3://{s3_bucket}/x", endpoint=closed)
    assert time.monotonic() - started < 15  # bounded retries, not a hang
    message = caught.value.message
    assert s3_bucket in message and closed in message and "\n" not in message


@cluster
def test_wrong_or_missing_credentials_say_so(
    s3_env: S3Server, s3_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    with pytest.raises(StorageUnavailable, match="refused access .*check the credentials"):
        S3ImageStore.from_url(f"s3://{s3_bucket}/x", endpoint=s3_env.endpoint)
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    with pytest.raises(StorageUnavailable, match="no S3 credentials .*AWS_ACCESS_KEY_ID"):
        S3ImageStore.from_url(f"s3://{s3_bucket}/x", endpoint=s3_env.endpoint)


@cluster
def test_the_standard_endpoint_variable_is_honoured(
    s3_env: S3Server, s3_bucket: str, s3_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_env.endpoint)
    store = image_store(f"s3://{s3_bucket}/{s3_prefix}")
    assert store.get(store.put(PNG)) == PNG
    assert isinstance(store, S3ImageStore) and store.endpoint.rstrip("/") == s3_env.endpoint


@cluster
def test_open_stores_passes_the_storage_endpoint(
    s3_env: S3Server, s3_bucket: str, s3_prefix: str, tmp_path: Path
) -> None:
    stores = open_stores(
        f"sqlite:///{tmp_path / 'jobs.db'}", f"s3://{s3_bucket}/{s3_prefix}", storage_endpoint=s3_env.endpoint
    )
    try:
        assert isinstance(stores.images, S3ImageStore)
        assert stores.images.exists(stores.images.put(PNG))
    finally:
        stores.close()


# -- an S3 that stops, fails or hangs --------------------------------------------------------------


@cluster
def test_a_stopped_server_is_storage_unavailable_until_a_write_succeeds(
    s3_env: S3Server, s3_bucket: str, s3_prefix: str
) -> None:
    with flaky_proxy(s3_env.endpoint) as proxy:
        store = S3ImageStore.from_url(f"s3://{s3_bucket}/{s3_prefix}", endpoint=proxy.endpoint)
        stored = store.put(PNG)
        proxy.down()
        for attempt in (lambda: store.put(PNG + b"new"), lambda: store.get(stored),
                        lambda: store.exists(stored), store.probe_write):
            with pytest.raises(StorageUnavailable) as caught:
                attempt()
            message = caught.value.message
            assert message.startswith("storage unavailable: ") and "\n" not in message
            assert repr(s3_bucket) in message and proxy.endpoint in message
        assert store.storage_fault is not None and s3_bucket in store.storage_fault.message

        proxy.up()
        assert store.get(stored) == PNG  # reads work again, but only a write clears the fault
        assert store.storage_fault is not None
        store.probe_write()
        assert store.storage_fault is None
        assert s3_env.keys(s3_bucket, s3_prefix) == [store._key(stored, ".png")]  # the probe left nothing

        proxy.down()
        with pytest.raises(StorageUnavailable):
            store.get(stored)
        proxy.up()
        new = store.put(PNG + b"after")  # a put clears it too
        assert store.storage_fault is None and store.get(new) == PNG + b"after"


@cluster
def test_a_5xx_is_retried_then_storage_unavailable(s3_env: S3Server, s3_bucket: str, s3_prefix: str) -> None:
    with flaky_proxy(s3_env.endpoint) as proxy:
        store = S3ImageStore.from_url(f"s3://{s3_bucket}/{s3_prefix}", endpoint=proxy.endpoint)
        proxy.answer_503()
        before = proxy.connections
        with pytest.raises(StorageUnavailable, match="503") as caught:
            store.put(PNG)
        assert proxy.connections - before == 3  # botocore's standard mode: three attempts
        assert s3_bucket in caught.value.message
        assert store.storage_fault is caught.value


@cluster
def test_a_server_that_hangs_times_out(s3_env: S3Server, s3_bucket: str, s3_prefix: str) -> None:
    with flaky_proxy(s3_env.endpoint) as proxy:
        store = S3ImageStore.from_url(
            f"s3://{s3_bucket}/{s3_prefix}", endpoint=proxy.endpoint, read_timeout_s=0.5, max_attempts=2
        )
        proxy.hang()
        started = time.monotonic()
        with pytest.raises(StorageUnavailable, match="(?i)timeout"):
            store.get("img_" + "1" * 24)
        assert time.monotonic() - started < 10
        assert store.storage_fault is not None


# -- the server on S3 ------------------------------------------------------------------------------


@cluster
@pytest.mark.slow
def test_serve_with_s3_storage_keeps_generated_images_in_the_bucket(
    s3_env: S3Server, s3_bucket: str, s3_prefix: str, tmp_path: Path
) -> None:
    port = free_port()
    args = [sys.executable, "-m", "sdgate", "serve", "--engine", "null", "--data-dir", str(tmp_path / "data"),
            "--port", str(port), "--storage", f"s3://{s3_bucket}/{s3_prefix}",
            "--storage-endpoint", s3_env.endpoint, "--log-level", "warning"]
    server = ProcessServer(args, port, tmp_path / "serve.log")  # os.environ has s3_env's credentials
    try:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            assert client.get("/readyz").json()["checks"]["storage"] == "ok"
            response = client.post("/sdapi/v1/txt2img", json={"prompt": "a red circle", "steps": 2,
                                                               "width": 64, "height": 64, "batch_size": 2})
            assert response.status_code == 200, response.text
            pictures = [base64.b64decode(b64) for b64 in response.json()["images"]]
            job = client.post("/api/v1/jobs", json={"prompt": "a blue square", "steps": 2, "width": 64,
                                                    "height": 64}).json()
            deadline = time.monotonic() + 30
            while job["state"] != "succeeded":
                assert job["state"] in ("queued", "running") and time.monotonic() < deadline, job
                time.sleep(0.05)
                job = client.get(f"/api/v1/jobs/{job['id']}").json()
            native_id = job["result"]["images"][0]["id"]
            served = client.get(f"/api/v1/images/{native_id}")
            assert served.status_code == 200 and served.headers["content-type"] == "image/png"
    finally:
        server.stop()
    admin = s3_env.client()
    keys = s3_env.keys(s3_bucket, s3_prefix)
    assert len(keys) == 3
    stored = {k.rsplit("/", 1)[1]: admin.get_object(Bucket=s3_bucket, Key=k)["Body"].read() for k in keys}
    assert stored[f"{native_id}.png"] == served.content
    for picture in pictures:  # A1111's answer carries the very bytes stored
        assert stored[f"{image_id(picture)}.png"] == picture
        assert Image.open(io.BytesIO(picture)).size == (64, 64)


@cluster
def test_serve_refuses_to_start_on_a_missing_bucket(s3_env: S3Server, tmp_path: Path) -> None:
    import subprocess

    args = [sys.executable, "-m", "sdgate", "serve", "--engine", "null", "--data-dir", str(tmp_path / "data"),
            "--port", str(free_port()), "--storage", "s3://sdgate-no-such-bucket/x",
            "--storage-endpoint", s3_env.endpoint]
    done = subprocess.run(args, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("StorageUnavailable: ") and "'sdgate-no-such-bucket'" in lines[0]
    assert s3_env.endpoint in lines[0]


@cluster
def test_jobs_fail_with_a_clear_error_while_s3_is_down_and_readyz_follows(
    s3_env: S3Server, s3_bucket: str, s3_prefix: str, tmp_path: Path
) -> None:
    from sdgate.server.app import create_app
    from sdgate.settings import Settings
    from tests.harness import ThreadServer

    def finished(client: httpx.Client, job_id: str) -> dict[str, Any]:
        deadline = time.monotonic() + 60
        while True:
            job: dict[str, Any] = client.get(f"/api/v1/jobs/{job_id}").json()
            if job["state"] not in ("queued", "running"):
                return job
            assert time.monotonic() < deadline, job
            time.sleep(0.05)

    body = {"prompt": "a red circle", "steps": 2, "width": 64, "height": 64}
    with flaky_proxy(s3_env.endpoint) as proxy:
        settings = Settings(data_dir=tmp_path / "data", engine="null", device="cpu", worker_poll_s=0.05,
                            storage=f"s3://{s3_bucket}/{s3_prefix}", storage_endpoint=proxy.endpoint)
        server = ThreadServer(create_app(settings))
        with server, httpx.Client(base_url=server.url, timeout=30) as client:
            proxy.down()
            job = finished(client, client.post("/api/v1/jobs", json=body).json()["id"])
            assert job["state"] == "failed"  # never "succeeded" without its images
            assert job["error"]["code"] == "storage_unavailable"
            assert repr(s3_bucket) in job["error"]["message"]
            ready = client.get("/readyz")
            assert ready.status_code == 503 and s3_bucket in ready.json()["reason"]

            proxy.up()
            assert client.get("/readyz").status_code == 200  # its probe write cleared the fault
            job = finished(client, client.post("/api/v1/jobs", json=body).json()["id"])
            assert job["state"] == "succeeded"
            stored = [key.rsplit("/", 1)[1] for key in s3_env.keys(s3_bucket, s3_prefix)]
            assert stored == [f"{job['result']['images'][0]['id']}.png"]
