"""Per-principal limits (issue 14): ``--max-queued-per-principal`` caps the jobs each caller has
queued or running at once. The store counts them in the transaction that inserts, so concurrent
submits never overshoot; over the limit each dialect answers its own 429, and nothing is left behind.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from sdgate.core.errors import QueueFull, TooManyJobs
from sdgate.core.jobs import ControlAction, JobState
from sdgate.core.requests import GenerationRequest
from sdgate.core.results import GenerationResult
from sdgate.jobs.store import SqlJobStore
from sdgate.server.app import create_app
from sdgate.server.services import Services
from sdgate.settings import Settings
from tests.fakes import FakeEngine

ALICE, BOB = ("alice", "s3cret"), ("bob", "pw")
HELD = (JobState.QUEUED, JobState.RUNNING)
SLOW = {"prompt": "slow", "steps": 500, "width": 64, "height": 64}
SMALL = {"prompt": "x", "steps": 1, "width": 64, "height": 64}


# -- the store: the count is part of the insert ----------------------------------------------------


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqlJobStore]:
    with SqlJobStore(f"sqlite:///{tmp_path / 'jobs.db'}") as store:
        yield store


def test_each_owner_has_its_own_count(store: SqlJobStore) -> None:
    for owner in ("alice", "bob", None):
        store.submit(GenerationRequest(), owner=owner, max_owner_jobs=2)
        store.submit(GenerationRequest(), owner=owner, max_owner_jobs=2)
        with pytest.raises(TooManyJobs) as info:
            store.submit(GenerationRequest(), owner=owner, max_owner_jobs=2)
        assert info.value.status_code == 429 and info.value.code == "too_many_jobs"
        assert isinstance(info.value, QueueFull)  # every dialect renders it as its queue 429
    assert len(store.list()) == 6
    store.submit(GenerationRequest(), owner="alice")  # no limit given: none applies


def test_a_running_job_counts_and_a_finished_one_frees_its_slot(store: SqlJobStore) -> None:
    first = store.submit(GenerationRequest(), owner="alice", max_owner_jobs=1)
    claimed = store.claim_next("w")
    assert claimed is not None and claimed.id == first.id
    with pytest.raises(TooManyJobs):
        store.submit(GenerationRequest(), owner="alice", max_owner_jobs=1)
    store.succeed(first.id, GenerationResult(), worker_id="w")
    second = store.submit(GenerationRequest(), owner="alice", max_owner_jobs=1)
    store.request_control(second.id, ControlAction.CANCEL)  # a cancelled job frees it too
    store.submit(GenerationRequest(), owner="alice", max_owner_jobs=1)


def test_concurrent_submits_never_exceed_the_limit(store: SqlJobStore) -> None:
    limit, threads, tries = 3, 8, 4
    outcomes: dict[str | None, list[str]] = {"alice": [], "bob": []}
    lock = threading.Lock()
    start = threading.Barrier(threads)

    def submit_many(owner: str) -> None:
        start.wait()
        for _ in range(tries):
            try:
                store.submit(GenerationRequest(), owner=owner, max_owner_jobs=limit)
                outcome = "queued"
            except TooManyJobs:
                outcome = "refused"
            with lock:
                outcomes[owner].append(outcome)

    owners = ["alice", "bob"] * (threads // 2)
    workers = [threading.Thread(target=submit_many, args=(owner,)) for owner in owners]
    for t in workers:
        t.start()
    for t in workers:
        t.join(30)
    for owner, seen in outcomes.items():
        assert seen.count("queued") == limit, (owner, seen)
        assert len(seen) == threads // 2 * tries
        assert len(store.list(owner=owner, states=HELD)) == limit


# -- the server: limits from the settings, a 429 in every dialect --------------------------------


def limited(settings: Settings, limit: int, *, auth: bool = True) -> Settings:
    update: dict[str, Any] = {"max_queued_per_principal": limit}
    if auth:
        update["api_auth"] = "alice:s3cret,bob:pw"
    return settings.model_copy(update=update)


@asynccontextmanager
async def running(settings: Settings) -> AsyncIterator[tuple[httpx.AsyncClient, Services]]:
    app = create_app(settings, engine=FakeEngine(slow_step_s=0.02))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t", timeout=30) as client:
            yield client, app.state.services


async def hold(client: httpx.AsyncClient, auth: tuple[str, str] | None, n: int) -> list[str]:
    """Queues ``n`` long jobs as ``auth`` through the native API; their ids."""
    ids = []
    for _ in range(n):
        r = await client.post("/api/v1/jobs", json=SLOW, auth=auth)
        assert r.status_code == 202, r.text
        ids.append(r.json()["id"])
    return ids


async def cancel(client: httpx.AsyncClient, auth: tuple[str, str] | None, ids: list[str]) -> None:
    """Cancels the jobs and waits until each has ended (a running one ends at its next step)."""
    for job_id in ids:
        await client.post(f"/api/v1/jobs/{job_id}/cancel", auth=auth)
    for job_id in ids:
        for _ in range(500):
            if (await client.get(f"/api/v1/jobs/{job_id}", auth=auth)).json()["state"] == "cancelled":
                break
            await asyncio.sleep(0.01)
        else:
            raise AssertionError(f"{job_id} did not end")


def image_files(settings: Settings) -> list[Path]:
    return sorted(p for p in settings.images_dir.rglob("*") if p.is_file())


# Each dialect's generation route, a body, and what its 429 body says.
DIALECTS = [
    ("native", "/api/v1/jobs", SMALL, lambda b: b["error"]["code"] == "too_many_jobs"),
    ("a1111", "/sdapi/v1/txt2img", SMALL, lambda b: b["error"] == "TooManyJobs" and "queued" in b["detail"]),
    (
        "openai",
        "/v1/images/generations",
        {"prompt": "x", "size": "256x256"},
        lambda b: b["error"]["type"] == "requests" and b["error"]["code"] == "rate_limit_exceeded",
    ),
    (
        "stability",
        "/v1/generation/alpha/text-to-image",
        {"text_prompts": [{"text": "x"}], "width": 512, "height": 512, "steps": 10},
        lambda b: b["name"] == "rate_limit_exceeded" and "queued" in b["message"],
    ),
    ("hf", "/models/alpha", {"inputs": "x"}, lambda b: "queued" in b["error"]),
]


@pytest.mark.parametrize(("name", "path", "body", "shaped"), DIALECTS, ids=[d[0] for d in DIALECTS])
async def test_a_user_at_the_limit_gets_429_in_each_dialect_while_another_submits(
    settings: Settings, name: str, path: str, body: dict[str, Any], shaped: Any
) -> None:
    async with running(limited(settings, 2)) as (client, services):
        held = await hold(client, ALICE, 2)
        images_before = image_files(services.settings)

        refused = await client.post(path, json=body, auth=ALICE)

        assert refused.status_code == 429, refused.text
        assert shaped(refused.json()), refused.json()
        assert int(refused.headers["retry-after"]) >= 1
        # Nothing left behind: no job, no image.
        assert [j.id for j in services.store.list(owner="alice")] == held[::-1]
        assert image_files(services.settings) == images_before
        # Bob is not alice: his own count is zero.
        bobs = await hold(client, BOB, 1)
        await cancel(client, ALICE, held)
        await cancel(client, BOB, bobs)


async def test_finishing_a_job_frees_a_slot(settings: Settings) -> None:
    async with running(limited(settings, 1)) as (client, services):
        first = await client.post("/sdapi/v1/txt2img", json=SMALL, auth=ALICE)  # blocking: done after
        assert first.status_code == 200
        second = await hold(client, ALICE, 1)
        assert (await client.post("/api/v1/jobs", json=SMALL, auth=ALICE)).status_code == 429
        await cancel(client, ALICE, second)
        third = await client.post("/api/v1/jobs", json=SMALL, auth=ALICE)
        assert third.status_code == 202, third.text
        assert len(services.store.list(owner="alice")) == 3


async def test_without_credentials_the_limit_is_everyones_together(settings: Settings) -> None:
    async with running(limited(settings, 1, auth=False)) as (client, services):
        held = await hold(client, None, 1)
        r = await client.post("/api/v1/jobs", json=SMALL)
        assert r.status_code == 429 and r.json()["error"]["code"] == "too_many_jobs"
        assert [j.id for j in services.store.list()] == held
        await cancel(client, None, held)


async def test_no_limit_by_default(settings: Settings) -> None:
    assert settings.max_queued_per_principal is None
    async with running(settings.model_copy(update={"api_auth": "alice:s3cret"})) as (client, _):
        held = await hold(client, ALICE, 5)
        await cancel(client, ALICE, held)
