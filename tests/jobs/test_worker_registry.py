"""The worker registry on SQLite and PostgreSQL: register, report, stale, forget, remove."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sdgate.core.jobs import WorkerInfo
from sdgate.core.requests import GenerationRequest
from sdgate.jobs.store import SqlJobStore


def _info(worker_id: str = "gpu-host-1-0", **changes: object) -> WorkerInfo:
    fields: dict[str, object] = {
        "id": worker_id,
        "host": "gpu-host-1",
        "pid": 4242,
        "device": "cuda:0",
        "engine": "diffusers",
        "models": ("sd15",),
        "free_memory_bytes": 8 * 2**30,
        "started_at": datetime.now(UTC),
        **changes,
    }
    return WorkerInfo.model_validate(fields)


def test_a_registered_worker_is_listed_with_what_it_reported(store: SqlJobStore) -> None:
    info = _info()
    store.register_worker(info)
    (listed,) = store.list_workers()
    assert listed.model_dump(exclude={"last_seen"}) == info.model_dump(exclude={"last_seen"})
    assert listed.last_seen is not None and not listed.stale

    job = store.submit(GenerationRequest())
    assert store.worker_seen(info.id, models=["sd15", "sdxl"], free_memory_bytes=None, current_job_id=job.id)
    (listed,) = store.list_workers()
    assert listed.models == ("sd15", "sdxl")
    assert listed.free_memory_bytes is None
    assert listed.current_job_id == job.id


def test_registering_again_replaces_the_row(store: SqlJobStore) -> None:
    store.register_worker(_info(models=("a",)))
    store.register_worker(_info(models=("b",), pid=7))
    (listed,) = store.list_workers()
    assert (listed.models, listed.pid) == (("b",), 7)


def test_a_worker_that_stops_reporting_is_stale_then_forgotten(store: SqlJobStore) -> None:
    store.register_worker(_info("dead"))
    store.register_worker(_info("alive"))
    registry = store._workers
    past = datetime.now(UTC) - timedelta(seconds=registry.ttl_s + 1)
    registry.seen("dead", models=(), free_memory_bytes=None, current_job_id=None, now=past)
    stale = {w.id: w.stale for w in store.list_workers()}
    assert stale == {"dead": True, "alive": False}

    long_ago = datetime.now(UTC) - timedelta(seconds=registry.forget_s + 1)
    registry.seen("dead", models=(), free_memory_bytes=None, current_job_id=None, now=long_ago)
    assert store.worker_seen("alive", models=(), free_memory_bytes=None, current_job_id=None)
    assert [w.id for w in store.list_workers()] == ["alive"]


def test_a_worker_whose_row_is_gone_learns_it(store: SqlJobStore) -> None:
    store.register_worker(_info())
    store.remove_worker(_info().id)
    assert store.list_workers() == []
    assert not store.worker_seen(_info().id, models=(), free_memory_bytes=None, current_job_id=None)
    store.remove_worker("never-registered")  # harmless


def test_stores_of_two_processes_see_the_same_workers(store: SqlJobStore, db_url: str) -> None:
    with SqlJobStore(db_url) as other:
        other.register_worker(_info("elsewhere", host="other-host"))
        store.register_worker(_info("here"))
        ids = {"elsewhere", "here"}
        assert {w.id for w in other.list_workers()} == {w.id for w in store.list_workers()} == ids
