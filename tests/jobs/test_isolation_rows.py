"""Whose a row is, on both databases: an image belongs to its uploader and to the owners of the
jobs that refer to it (checked exactly, not by text match); A1111 option overrides are kept per
principal and merged, also when two nodes save at once."""

from __future__ import annotations

import threading

from sdgate.core.jobs import JobState
from sdgate.core.requests import GenerationRequest, Mode
from sdgate.core.results import GenerationResult, StoredImage
from sdgate.jobs.principal_options import PrincipalOptions
from sdgate.jobs.store import SqlJobStore
from sdgate.jobs.uploads import Uploads

UPLOADED = "img_" + "a" * 24
MADE = "img_" + "b" * 24
INPUT = "img_" + "c" * 24


def _finish(store: SqlJobStore, job_id: str, image_id: str) -> None:
    claimed = store.claim_next("w1")
    assert claimed is not None and claimed.id == job_id
    result = GenerationResult(images=(StoredImage(id=image_id, seed=1, width=8, height=8, infotext=""),))
    store.succeed(job_id, result, worker_id="w1")
    assert store.get(job_id).state is JobState.SUCCEEDED


def test_an_image_is_visible_to_its_uploader_and_its_jobs_owners_only(store: SqlJobStore) -> None:
    uploads = Uploads(store.database)
    uploads.record(UPLOADED, owner="alice", content_type="image/png", size=1)
    made = store.submit(GenerationRequest(prompt="x"), owner="bob")
    _finish(store, made.id, MADE)
    store.submit(GenerationRequest(prompt="y", mode=Mode.IMG2IMG, init_images=(INPUT,)), owner="carol")

    assert uploads.visible_to(UPLOADED, "alice", store)
    assert not uploads.visible_to(UPLOADED, "bob", store)
    assert uploads.visible_to(MADE, "bob", store) and not uploads.visible_to(MADE, "alice", store)
    assert uploads.visible_to(INPUT, "carol", store) and not uploads.visible_to(INPUT, "bob", store)
    # Quoting an id in a prompt (or in metadata) claims nothing: the job's images are read exactly.
    store.submit(GenerationRequest(prompt=f"look: {MADE}"), owner="mallory", metadata={"k": MADE})
    assert not uploads.visible_to(MADE, "mallory", store)
    # The anonymous owner, odd ids and NUL are no one's.
    assert not uploads.visible_to(MADE, None, store)
    assert not uploads.visible_to("img_%", "bob", store)
    assert not uploads.visible_to(MADE, "bob\x00", store)


def test_the_same_bytes_uploaded_by_two_callers_are_both_theirs(store: SqlJobStore) -> None:
    uploads = Uploads(store.database)
    uploads.record(UPLOADED, owner="alice", content_type="image/png", size=1)
    assert not uploads.visible_to(UPLOADED, "bob", store)
    uploads.record(UPLOADED, owner="bob", content_type="image/png", size=1)  # same content, same id
    uploads.record(UPLOADED, owner="bob", content_type="image/png", size=1)  # again: no duplicate row
    assert uploads.visible_to(UPLOADED, "alice", store) and uploads.visible_to(UPLOADED, "bob", store)
    assert not uploads.visible_to(UPLOADED, "carol", store)


def test_option_overrides_are_per_principal_and_merge(store: SqlJobStore) -> None:
    options = PrincipalOptions(store.database)
    assert options.get("alice") == {}
    assert options.update("alice", {"CLIP_stop_at_last_layers": 2}) == {"CLIP_stop_at_last_layers": 2}
    options.update("alice", {"eta_noise_seed_delta": 31337})
    options.update("bob", {"CLIP_stop_at_last_layers": 4})
    assert options.get("alice") == {"CLIP_stop_at_last_layers": 2, "eta_noise_seed_delta": 31337}
    assert options.get("bob") == {"CLIP_stop_at_last_layers": 4}
    assert options.get("nul\x00") == {}
    options.clear("alice")
    assert options.get("alice") == {} and options.get("bob") == {"CLIP_stop_at_last_layers": 4}


def test_nodes_saving_one_principals_options_at_once_all_keep_theirs(store: SqlJobStore, db_url: str) -> None:
    nodes = [SqlJobStore(db_url) for _ in range(4)]
    start = threading.Barrier(len(nodes))
    errors: list[BaseException] = []

    def save(node: SqlJobStore, i: int) -> None:
        try:
            start.wait()
            for round_ in range(10):
                PrincipalOptions(node.database).update("alice", {f"key{i}": round_})
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=save, args=(n, i)) for i, n in enumerate(nodes)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
    finally:
        for n in nodes:
            n.close()
    assert errors == []
    # Each save merges under the row's lock (a first save racing another's insert overwrites it,
    # but every node saved again after that): every node's last value is kept.
    assert PrincipalOptions(store.database).get("alice") == {f"key{i}": 9 for i in range(len(nodes))}
