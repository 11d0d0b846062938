"""What every ``ImageStore`` does, over the local folder and S3 (``[s3]``: SeaweedFS from
``scripts/services.sh``, marked ``cluster``); what is the folder's own (files, paths) at the end.
S3's own behaviour (keys, faults, links) is in test_s3_images.py."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from sdgate.core.errors import NotFound
from sdgate.jobs.images import ImageStore, LocalImageStore
from tests.jobs.s3server import S3Server, s3_bucket, s3_env, s3_prefix, s3_server

__all__ = ["s3_bucket", "s3_env", "s3_prefix", "s3_server"]  # fixtures

PNG = b"\x89PNG\r\n\x1a\n" + b"pretend" * 10


@dataclass
class Backend:
    images: ImageStore
    stored: Callable[[], list[str]]  # the names of the objects or files the store holds, sorted


@pytest.fixture(params=["local", pytest.param("s3", marks=pytest.mark.cluster)])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    if request.param == "local":
        local = LocalImageStore(tmp_path / "images")
        return Backend(local, lambda: sorted(p.name for p in local.root.rglob("*") if p.is_file()))
    from sdgate.jobs.s3images import S3ImageStore

    server: S3Server = request.getfixturevalue("s3_env")
    bucket: str = request.getfixturevalue("s3_bucket")
    prefix: str = request.getfixturevalue("s3_prefix")
    store = S3ImageStore.from_url(f"s3://{bucket}/{prefix}", endpoint=server.endpoint)
    return Backend(store, lambda: sorted(k.rsplit("/", 1)[1] for k in server.keys(bucket, prefix)))


@pytest.fixture
def images(backend: Backend) -> ImageStore:
    return backend.images


@pytest.fixture
def local_images(tmp_path: Path) -> LocalImageStore:
    return LocalImageStore(tmp_path / "images")


def test_put_get_round_trip_with_content_address(images: ImageStore) -> None:
    image_id = images.put(PNG)
    assert image_id == "img_" + hashlib.sha256(PNG).hexdigest()[:24]
    assert images.get(image_id) == PNG
    assert images.exists(image_id)
    assert images.content_type(image_id) == "image/png"


def test_same_bytes_are_stored_once(backend: Backend) -> None:
    images = backend.images
    assert images.put(PNG) == images.put(PNG)
    assert images.put(PNG + b"!") != images.put(PNG)
    assert len(backend.stored()) == 2


def test_other_content_types_keep_their_extension(backend: Backend) -> None:
    images = backend.images
    image_id = images.put(b"\xff\xd8\xff fake jpeg", content_type="image/jpeg")
    assert backend.stored() == [f"{image_id}.jpg"]
    assert images.content_type(image_id) == "image/jpeg"
    assert images.get(image_id) == b"\xff\xd8\xff fake jpeg"
    with pytest.raises(ValueError):
        images.put(b"x", content_type="text/html")


def test_missing_and_malformed_ids_are_not_found(images: ImageStore) -> None:
    images.put(PNG)
    for bad in ["img_" + "0" * 24, "img_../../etc/passwd", "../jobs.db", "img_" + "A" * 24, ""]:
        assert not images.exists(bad)
        with pytest.raises(NotFound):
            images.get(bad)
        with pytest.raises(NotFound):
            images.content_type(bad)


def test_delete_is_idempotent(backend: Backend) -> None:
    images = backend.images
    image_id = images.put(PNG)
    images.delete(image_id)
    assert not images.exists(image_id)
    assert backend.stored() == []
    images.delete(image_id)
    images.delete("img_../../x")


def test_concurrent_puts(backend: Backend) -> None:
    images = backend.images
    ids: list[str] = []
    start = threading.Barrier(12)

    def put(data: bytes) -> None:
        start.wait()
        ids.append(images.put(data))

    # 8 threads with the same bytes, 4 with their own
    payloads = [PNG * 1000] * 8 + [PNG * 1000 + bytes([i]) for i in range(4)]
    threads = [threading.Thread(target=put, args=(data,)) for data in payloads]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(ids) == 12 and len(set(ids)) == 5
    for data in set(payloads):
        assert images.get("img_" + hashlib.sha256(data).hexdigest()[:24]) == data
    assert backend.stored() == sorted(f"{i}.png" for i in set(ids))


# -- the folder's own --------------------------------------------------------------------------


def test_files_are_sharded_and_written_whole(local_images: LocalImageStore) -> None:
    image_id = local_images.put(PNG)
    digest = image_id[4:]
    assert local_images.path(image_id) == local_images.root / digest[:2] / digest[2:4] / f"{image_id}.png"
    files = [p for p in local_images.root.rglob("*") if p.is_file()]
    assert files == [local_images.path(image_id)]  # no temporary file left behind


def test_malformed_ids_reach_no_path(local_images: LocalImageStore) -> None:
    for bad in ["img_" + "0" * 24, "img_../../etc/passwd", "../jobs.db", "img_" + "A" * 24, ""]:
        with pytest.raises(NotFound):
            local_images.path(bad)
