from __future__ import annotations

import hashlib
import threading
from pathlib import Path

import pytest

from sdgate.core.errors import NotFound
from sdgate.jobs.images import LocalImageStore

PNG = b"\x89PNG\r\n\x1a\n" + b"pretend" * 10


@pytest.fixture
def images(tmp_path: Path) -> LocalImageStore:
    return LocalImageStore(tmp_path / "images")


def test_put_get_round_trip_with_content_address(images: LocalImageStore) -> None:
    image_id = images.put(PNG)
    assert image_id == "img_" + hashlib.sha256(PNG).hexdigest()[:24]
    assert images.get(image_id) == PNG
    assert images.exists(image_id)
    assert images.content_type(image_id) == "image/png"


def test_files_are_sharded_and_written_whole(images: LocalImageStore) -> None:
    image_id = images.put(PNG)
    digest = image_id[4:]
    assert images.path(image_id) == images.root / digest[:2] / digest[2:4] / f"{image_id}.png"
    files = [p for p in images.root.rglob("*") if p.is_file()]
    assert files == [images.path(image_id)]  # no temporary file left behind


def test_same_bytes_are_stored_once(images: LocalImageStore) -> None:
    assert images.put(PNG) == images.put(PNG)
    assert images.put(PNG + b"!") != images.put(PNG)
    assert len([p for p in images.root.rglob("*") if p.is_file()]) == 2


def test_other_content_types_keep_their_extension(images: LocalImageStore) -> None:
    image_id = images.put(b"\xff\xd8\xff fake jpeg", content_type="image/jpeg")
    assert images.path(image_id).suffix == ".jpg"
    assert images.content_type(image_id) == "image/jpeg"
    with pytest.raises(ValueError):
        images.put(b"x", content_type="text/html")


def test_missing_and_malformed_ids_are_not_found(images: LocalImageStore) -> None:
    images.put(PNG)
    for bad in ["img_" + "0" * 24, "img_../../etc/passwd", "../jobs.db", "img_" + "A" * 24, ""]:
        assert not images.exists(bad)
        with pytest.raises(NotFound):
            images.get(bad)
        with pytest.raises(NotFound):
            images.path(bad)


def test_delete_is_idempotent(images: LocalImageStore) -> None:
    image_id = images.put(PNG)
    images.delete(image_id)
    assert not images.exists(image_id)
    images.delete(image_id)
    images.delete("img_../../x")


def test_concurrent_puts_of_the_same_bytes(images: LocalImageStore) -> None:
    ids: list[str] = []
    start = threading.Barrier(8)

    def put() -> None:
        start.wait()
        ids.append(images.put(PNG * 1000))

    threads = [threading.Thread(target=put) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(ids)) == 1
    assert images.get(ids[0]) == PNG * 1000
    assert [p.name for p in images.root.rglob("*") if p.is_file()] == [f"{ids[0]}.png"]
