"""Isolation between callers (issue 16): two Basic users, alice and bob, and an admin (root).

Neither user can read, cancel, delete, retry, stream (SSE or WebSocket), download, list, interrupt
or skip the other's jobs through any dialect: another's job or image id answers 404 in the
dialect's own error shape, as an id that does not exist. The admin sees and acts on both. A1111
options are per principal: alice's Clip skip never reaches bob's jobs; root's are the defaults.

Last, a schema-driven fuzz run (slow): schemathesis drives every operation of ``/openapi.json`` with
alice's credentials after bob made jobs, an upload and saved options, and probes every job and
image id parameter with bob's ids too: no 5xx, and no answer holds bob's ids, prompt or options.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import hypothesis
import pytest
import schemathesis
import websockets
from PIL import Image
from schemathesis.config import SchemathesisConfig
from starlette.datastructures import Headers

import sdgate.server.app as app_module
import sdgate.server.auth as auth_module
from sdgate.core.jobs import WorkerInfo
from sdgate.core.requests import GenerationRequest
from sdgate.jobs.database import create_db_engine, ensure_schema
from sdgate.jobs.keys import KeyStore
from sdgate.jobs.store import SqlJobStore
from sdgate.server.app import create_app
from sdgate.server.auth import BASIC_SCOPES, Authenticator, BasicAuth, Principal
from sdgate.server.dialects.native.cluster import cluster_status
from sdgate.server.signing import UrlSigner
from sdgate.settings import Settings
from tests.fakes import FakeEngine, write_fake_checkpoint
from tests.harness import ThreadServer

ROOT_TOKEN = "root-token-for-tests"
ROOT = Principal(id="root", scopes=frozenset({"admin", "generate", "read"}))
TERMINAL = ("succeeded", "failed", "cancelled")


class RootOrBasic(Authenticator):
    """The ``--api-auth`` users, plus an admin for ``Authorization: Bearer ROOT_TOKEN``."""

    challenge = "Basic"

    def __init__(self, settings: Settings) -> None:
        self.basic = BasicAuth(settings.auth_pairs())

    def authenticate(self, headers: Headers, query_token: str | None = None) -> Principal:
        if headers.get("authorization") == f"Bearer {ROOT_TOKEN}":
            return ROOT
        return self.basic.authenticate(headers)


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


ALICE = basic("alice", "pw1")
BOB = basic("bob", "pw2")
ADMIN = {"Authorization": f"Bearer {ROOT_TOKEN}"}


@dataclass
class Server:
    url: str
    engine: FakeEngine
    data_dir: Path

    def client(self, headers: dict[str, str]) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers=headers, timeout=30)


def isolated_settings(root: Path, **overrides: Any) -> Settings:
    write_fake_checkpoint(root / "models" / "Stable-diffusion" / "alpha.safetensors")
    return Settings(data_dir=root / "data", models_dir=root / "models", device="cpu", worker_poll_s=0.02,
                    api_auth="alice:pw1,bob:pw2", **overrides)


def serve_isolated(settings: Settings, engine: FakeEngine) -> Iterator[Server]:
    """The real app with ``RootOrBasic`` as its authenticator (however the app asks for one: the
    patch lasts until the server has started, so other servers of the module get their own)."""

    def make(settings: Settings, *args: Any, **kwargs: Any) -> Authenticator:
        return RootOrBasic(settings)

    with contextlib.ExitStack() as stack:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(auth_module, "authenticator_for", make)
            patch.setattr(app_module, "authenticator_for", make)
            server = stack.enter_context(ThreadServer(create_app(settings, engine=engine)))
        yield Server(server.url, engine, settings.data_dir)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    settings = isolated_settings(tmp_path_factory.mktemp("isolation"))
    yield from serve_isolated(settings, FakeEngine(size=64, steps=4, slow_step_s=0.05))


def png_b64(colour: str = "red") -> str:
    out = io.BytesIO()
    Image.new("RGB", (64, 64), colour).save(out, format="PNG")
    return base64.b64encode(out.getvalue()).decode()


def finished(client: httpx.Client, job_id: str, timeout: float = 20) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        body = client.get(f"/api/v1/jobs/{job_id}").json()
        if body["state"] in TERMINAL:
            return dict(body)
        assert time.monotonic() < deadline, f"job {job_id} stayed {body['state']}"
        time.sleep(0.02)


def native_job(client: httpx.Client, **body: Any) -> dict[str, Any]:
    response = client.post("/api/v1/jobs", json={"steps": 2, **body})
    assert response.status_code == 202, response.text
    return finished(client, response.json()["id"])


def assert_native_404(response: httpx.Response) -> None:
    assert response.status_code == 404, (response.status_code, response.text)
    assert response.json()["error"]["code"] == "not_found"


def running(client: httpx.Client, job_id: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while client.get(f"/api/v1/jobs/{job_id}").json()["state"] != "running":
        assert time.monotonic() < deadline, f"job {job_id} never ran"
        time.sleep(0.02)


# -- native --------------------------------------------------------------------------------------------


def test_a_users_job_is_a_404_to_the_other_and_visible_to_the_admin(server: Server) -> None:
    with server.client(ALICE) as alice, server.client(BOB) as bob, server.client(ADMIN) as root:
        theirs = native_job(bob, prompt="bob's private lighthouse")
        mine = native_job(alice, prompt="alice's own garden")
        job = theirs["id"]
        for response in (
            alice.get(f"/api/v1/jobs/{job}"),
            alice.get(f"/api/v1/jobs/{job}", params={"include": "images"}),
            alice.post(f"/api/v1/jobs/{job}/cancel"),
            alice.post(f"/api/v1/jobs/{job}/retry"),
            alice.get(f"/api/v1/jobs/{job}/events"),
            alice.delete(f"/api/v1/jobs/{job}"),
        ):
            assert_native_404(response)
            assert "lighthouse" not in response.text
        # The same answer as for an id that never existed: nothing tells the two apart.
        nope = alice.get("/api/v1/jobs/job_00000000000000000000000000")
        assert_native_404(nope)
        assert nope.json()["error"]["code"] == alice.get(f"/api/v1/jobs/{job}").json()["error"]["code"]

        listed = alice.get("/api/v1/jobs", params={"limit": 200}).json()["jobs"]
        assert mine["id"] in {j["id"] for j in listed} and job not in {j["id"] for j in listed}
        succeeded = alice.get("/api/v1/jobs", params={"state": "succeeded"}).json()["jobs"]
        assert all(j["id"] != job for j in succeeded)

        # bob still has it, untouched; root sees both and may act on either
        assert bob.get(f"/api/v1/jobs/{job}").json()["state"] == "succeeded"
        everyone = {j["id"] for j in root.get("/api/v1/jobs", params={"limit": 200}).json()["jobs"]}
        assert {job, mine["id"]} <= everyone
        assert root.get(f"/api/v1/jobs/{job}").json()["request"]["prompt"] == "bob's private lighthouse"
        retried = root.post(f"/api/v1/jobs/{job}/retry")
        assert retried.status_code == 202
        finished(root, retried.json()["id"])
        assert root.delete(f"/api/v1/jobs/{retried.json()['id']}").status_code == 204


def test_running_jobs_cannot_be_cancelled_or_seen_in_the_queue_by_the_other(server: Server) -> None:
    with server.client(ALICE) as alice, server.client(BOB) as bob, server.client(ADMIN) as root:
        job = bob.post("/api/v1/jobs", json={"prompt": "slow bob", "steps": 40}).json()["id"]
        running(bob, job)
        assert_native_404(alice.post(f"/api/v1/jobs/{job}/cancel"))
        assert_native_404(alice.delete(f"/api/v1/jobs/{job}"))
        assert job not in alice.get("/api/v1/queue").json()["running"]
        assert job in bob.get("/api/v1/queue").json()["running"]
        assert job in root.get("/api/v1/queue").json()["running"]
        # The admin may cancel anyone's job.
        assert root.post(f"/api/v1/jobs/{job}/cancel").status_code == 200
        assert finished(bob, job)["state"] == "cancelled"


def test_the_cluster_view_shows_a_workers_job_to_its_owner_and_admins_only(tmp_path: Path) -> None:
    store = SqlJobStore(f"sqlite:///{tmp_path / 'jobs.db'}")
    try:
        job = store.submit(GenerationRequest(prompt="bob's"), owner="bob")
        store.register_worker(WorkerInfo(id="w1", host="h", pid=1, current_job_id=job.id,
                                         started_at=datetime.now(UTC)))
        alice, bob = (Principal(id=u, scopes=BASIC_SCOPES) for u in ("alice", "bob"))
        shown = {who: cluster_status(store, p)["workers"][0]["current_job"]
                 for who, p in (("alice", alice), ("bob", bob), ("root", ROOT))}
        assert shown == {"alice": None, "bob": job.id, "root": job.id}
    finally:
        store.close()


def test_images_and_uploads_belong_to_their_owner(server: Server) -> None:
    with server.client(ALICE) as alice, server.client(BOB) as bob, server.client(ADMIN) as root:
        done = native_job(bob, prompt="bob's secret picture")
        image = done["result"]["images"][0]["id"]
        assert bob.get(f"/api/v1/images/{image}").status_code == 200
        assert bob.get(f"/api/v1/images/{image}").headers["cache-control"].startswith("private")
        assert root.get(f"/api/v1/images/{image}").status_code == 200
        for params in ({}, {"format": "jpeg"}):
            refused = alice.get(f"/api/v1/images/{image}", params=params)
            assert_native_404(refused)
            assert "secret picture" not in refused.text
        # Naming bob's image as an init image, or quoting its id in a prompt, claims nothing.
        named = alice.post("/api/v1/jobs", json={"prompt": "x", "mode": "img2img", "init_image": image})
        assert_native_404(named)
        native_job(alice, prompt=f"a prompt that quotes {image}")
        assert_native_404(alice.get(f"/api/v1/images/{image}"))

        # An upload is its uploader's: bob's is a 404 to alice, as image and as init image.
        raw = base64.b64decode(png_b64("blue"))
        upload = bob.post("/api/v1/uploads", content=raw,
                          headers={"Content-Type": "application/octet-stream"})
        assert upload.status_code == 201, upload.text
        uploaded = upload.json()["id"]
        assert bob.get(f"/api/v1/images/{uploaded}").status_code == 200
        assert_native_404(alice.get(f"/api/v1/images/{uploaded}"))
        refused = alice.post("/api/v1/jobs", json={"prompt": "x", "mode": "img2img", "init_image": uploaded})
        assert_native_404(refused)
        assert refused.json()["error"]["field"] == "init_image"
        # bob's own upload works as his init image, and its stored input is his to read
        used = native_job(bob, prompt="from my upload", mode="img2img", init_image=uploaded)
        assert used["state"] == "succeeded"
        stored_input = used["request"]["init_image"]
        assert bob.get(f"/api/v1/images/{stored_input}").status_code == 200
        assert_native_404(alice.get(f"/api/v1/images/{stored_input}"))


def test_sse_of_another_users_job_is_a_404(server: Server) -> None:
    with server.client(ALICE) as alice, server.client(BOB) as bob:
        job = bob.post("/api/v1/jobs", json={"prompt": "bob streams", "steps": 3}).json()["id"]
        with alice.stream("GET", f"/api/v1/jobs/{job}/events", headers={"Last-Event-ID": "0"}) as stream:
            assert stream.status_code == 404
            assert json.loads(stream.read())["error"]["code"] == "not_found"
        finished(bob, job)
        own = bob.get(f"/api/v1/jobs/{job}/events", headers={"Last-Event-ID": "0"})
        assert own.status_code == 200 and "event: succeeded" in own.text


async def test_the_websocket_carries_only_the_callers_own_events(server: Server) -> None:
    url = server.url.replace("http", "ws") + "/api/v1/events"
    async with websockets.connect(url, additional_headers=ALICE) as alice_ws, \
            websockets.connect(url, additional_headers=ADMIN) as root_ws:
        for ws in (alice_ws, root_ws):
            assert json.loads(await ws.recv())["event"] == "hello"
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
            theirs = (await client.post("/api/v1/jobs", json={"prompt": "bob ws secret", "steps": 2},
                                        headers=BOB)).json()["id"]
            mine = (await client.post("/api/v1/jobs", json={"prompt": "alice ws", "steps": 2},
                                      headers=ALICE)).json()["id"]

        async def until_done(ws: websockets.ClientConnection, job_id: str) -> list[dict[str, Any]]:
            seen = []
            async with asyncio.timeout(20):
                while True:
                    message = json.loads(await ws.recv())
                    seen.append(message)
                    if message["data"].get("job_id") == job_id and message["event"] in TERMINAL:
                        return seen

        alice_seen = await until_done(alice_ws, mine)
        root_seen = await until_done(root_ws, mine)
        if not any(m["data"].get("job_id") == theirs and m["event"] in TERMINAL for m in root_seen):
            root_seen += await until_done(root_ws, theirs)
    assert {m["data"]["job_id"] for m in alice_seen} == {mine}
    assert "bob ws secret" not in json.dumps(alice_seen)
    assert {theirs, mine} <= {m["data"]["job_id"] for m in root_seen}


# -- A1111 ---------------------------------------------------------------------------------------------


def test_a1111_progress_interrupt_and_skip_act_on_the_callers_own_job(server: Server) -> None:
    with server.client(ALICE) as alice, server.client(BOB) as bob, server.client(ADMIN) as root:
        before = {j["id"] for j in root.get("/api/v1/jobs", params={"limit": 200}).json()["jobs"]}
        body = {"prompt": "slow bob a1111", "steps": 40, "width": 64, "height": 64}
        with httpx.Client(base_url=server.url, headers=BOB, timeout=60) as blocking:
            answer: dict[str, Any] = {}
            thread = threading.Thread(target=lambda: answer.update(
                r=blocking.post("/sdapi/v1/txt2img", json=body)))
            thread.start()
            deadline = time.monotonic() + 20
            while bob.get("/sdapi/v1/progress").json()["state"]["sampling_step"] == 0:
                assert time.monotonic() < deadline, "bob's job never ran"
                time.sleep(0.02)
            seen = alice.get("/sdapi/v1/progress").json()
            assert seen["progress"] == 0.0 and seen["state"]["job_count"] == 0
            assert seen["current_image"] is None
            assert alice.post("/sdapi/v1/interrupt").status_code == 200
            assert alice.post("/sdapi/v1/skip").status_code == 200
            thread.join(60)
        response = answer["r"]
        assert response.status_code == 200, response.text
        job = next(j for j in root.get("/api/v1/jobs", params={"limit": 200}).json()["jobs"]
                   if j["id"] not in before and j["request"]["prompt"] == "slow bob a1111")
        # 40 steps, neither interrupted nor skipped: alice's requests reached nothing of bob's
        assert job["state"] == "succeeded" and job["result"]["interrupted"] is False
        assert job["progress"]["step"] == 40 and len(response.json()["images"]) == 1
        assert not job.get("control")


def test_a1111_options_are_per_principal(server: Server) -> None:
    with server.client(ALICE) as alice, server.client(BOB) as bob, server.client(ADMIN) as root:
        defaults = root.get("/sdapi/v1/options").json()
        clip = defaults["CLIP_stop_at_last_layers"]
        assert alice.post("/sdapi/v1/options", json={"CLIP_stop_at_last_layers": 3}).status_code == 200
        assert alice.get("/sdapi/v1/options").json()["CLIP_stop_at_last_layers"] == 3
        assert bob.get("/sdapi/v1/options").json()["CLIP_stop_at_last_layers"] == clip
        assert root.get("/sdapi/v1/options").json() == defaults
        # a bad value is refused for a user as for the admin, and saves nothing
        refused = alice.post("/sdapi/v1/options", json={"CLIP_stop_at_last_layers": "many"})
        assert refused.status_code == 422
        assert alice.get("/sdapi/v1/options").json()["CLIP_stop_at_last_layers"] == 3

        def clip_skip_of(client: httpx.Client, prompt: str) -> int:
            before = {j["id"] for j in root.get("/api/v1/jobs", params={"limit": 200}).json()["jobs"]}
            response = client.post("/sdapi/v1/txt2img", json={"prompt": prompt, "steps": 2})
            assert response.status_code == 200, response.text
            job = next(j for j in root.get("/api/v1/jobs", params={"limit": 200}).json()["jobs"]
                       if j["id"] not in before)
            return int(job["request"]["clip_skip"])

        assert clip_skip_of(alice, "alice clip") == 3
        assert clip_skip_of(bob, "bob clip") == 1
        # The admin changes the server's defaults: bob follows them, alice keeps her own.
        assert root.post("/sdapi/v1/options", json={"CLIP_stop_at_last_layers": 2}).status_code == 200
        assert bob.get("/sdapi/v1/options").json()["CLIP_stop_at_last_layers"] == 2
        assert clip_skip_of(bob, "bob clip again") == 2
        assert clip_skip_of(alice, "alice clip again") == 3
        # override_settings kept after a job are the caller's own too
        kept = {"prompt": "keep", "steps": 2, "override_settings": {"eta_noise_seed_delta": 31337},
                "override_settings_restore_afterwards": False}
        assert bob.post("/sdapi/v1/txt2img", json=kept).status_code == 200
        assert bob.get("/sdapi/v1/options").json()["eta_noise_seed_delta"] == 31337
        assert alice.get("/sdapi/v1/options").json()["eta_noise_seed_delta"] != 31337
        assert root.get("/sdapi/v1/options").json()["eta_noise_seed_delta"] != 31337
        root.post("/sdapi/v1/options", json={"CLIP_stop_at_last_layers": clip})


def test_a1111_options_checkpoint_is_per_principal(tmp_path: Path) -> None:
    settings = isolated_settings(tmp_path)
    write_fake_checkpoint(tmp_path / "models" / "Stable-diffusion" / "beta.safetensors")
    for server in serve_isolated(settings, FakeEngine(size=64, steps=2)):
        with server.client(ALICE) as alice, server.client(BOB) as bob:
            before = bob.get("/sdapi/v1/options").json()["sd_model_checkpoint"]
            other = "beta" if "alpha" in before else "alpha"
            assert alice.post("/sdapi/v1/options", json={"sd_model_checkpoint": other}).status_code == 200
            assert other in alice.get("/sdapi/v1/options").json()["sd_model_checkpoint"]
            assert bob.get("/sdapi/v1/options").json()["sd_model_checkpoint"] == before
            assert bob.post("/sdapi/v1/txt2img", json={"prompt": "b", "steps": 2}).status_code == 200
            assert alice.post("/sdapi/v1/txt2img", json={"prompt": "a", "steps": 2}).status_code == 200
        calls = {c.prompt: c.model for c in server.engine.calls}
        assert other not in (calls["b"] or "") and other in (calls["a"] or "")
        # The server's saved defaults (the file) did not change either.
        saved = settings.data_dir / "a1111-options.json"
        assert not saved.exists() or other not in saved.read_text()


# -- OpenAI, Stability, Hugging Face: nothing by id but signed links, which expire --------------------


def test_openai_signed_links_work_for_their_holder_and_expire(server: Server) -> None:
    with server.client(BOB) as bob, server.client(ALICE) as alice:
        response = bob.post("/v1/images/generations",
                            json={"prompt": "bob openai", "response_format": "url", "size": "256x256"})
        assert response.status_code == 200, response.text
        link = response.json()["data"][0]["url"]
        path = "/v1/images/files/" + httpx.URL(link).path.rsplit("/", 1)[1]
        image_id = path.rsplit("/", 1)[1]
        params = dict(httpx.URL(link).params)
        assert httpx.get(server.url + path, params=params).status_code == 200  # the link is the credential
        # An expired link, correctly signed, is a 404 in OpenAI's shape; so is a forged one.
        signer = UrlSigner.from_settings(Settings(data_dir=server.data_dir))
        expired = int(time.time()) - 1
        stale = {"expires": expired, "signature": signer.signature(image_id, expired)}
        gone = httpx.get(server.url + path, params=stale)
        assert gone.status_code == 404 and gone.json()["error"]["code"] == "not_found"
        assert signer.verify(image_id, expired + 10, signer.signature(image_id, expired + 10), now=expired)
        assert not signer.verify(image_id, expired, signer.signature(image_id, expired), now=expired + 1)
        forged = httpx.get(server.url + path, params={**params, "signature": "0" * 64})
        assert forged.status_code == 404
        # Without the link, the image is bob's: a 404 to alice through the native route.
        assert_native_404(alice.get(f"/api/v1/images/{image_id}"))


def test_blocking_dialects_answer_only_their_caller(server: Server) -> None:
    """Stability, OpenAI and Hugging Face keep no job ids on the wire: each answer is the caller's
    own images, and the jobs they leave are their caller's (a 404 to the other)."""
    with server.client(ALICE) as alice, server.client(BOB) as bob, server.client(ADMIN) as root:
        before = {j["id"] for j in root.get("/api/v1/jobs", params={"limit": 200}).json()["jobs"]}
        assert bob.post("/models/some/model", json={"inputs": "bob hf"}).status_code == 200
        stability = bob.post("/v1/generation/stable-diffusion-v1-6/text-to-image",
                             json={"text_prompts": [{"text": "bob stability"}], "width": 512, "height": 512,
                                   "steps": 10}, headers={"Accept": "application/json"})
        assert stability.status_code == 200, stability.text
        listed = root.get("/api/v1/jobs", params={"limit": 200}).json()["jobs"]
        made = [j for j in listed if j["id"] not in before]
        assert {j["request"]["prompt"] for j in made} >= {"bob hf", "bob stability"}
        for job in made:
            assert_native_404(alice.get(f"/api/v1/jobs/{job['id']}"))
            assert bob.get(f"/api/v1/jobs/{job['id']}").status_code == 200
            for image in job["result"]["images"]:
                assert_native_404(alice.get(f"/api/v1/images/{image['id']}"))


# -- real API keys ------------------------------------------------------------------------------------


async def test_two_api_keys_see_only_their_own_and_an_admin_key_sees_both(tmp_path: Path) -> None:
    """The same isolation with ``--auth keys``: a key's jobs are its own (the owner is the key id),
    an admin key sees every key's, and A1111 options are per key."""
    write_fake_checkpoint(tmp_path / "models" / "Stable-diffusion" / "alpha.safetensors")
    settings = Settings(data_dir=tmp_path / "data", models_dir=tmp_path / "models", device="cpu",
                        worker_poll_s=0.02, auth="keys")
    database = create_db_engine(settings.database_url)
    ensure_schema(database)
    store = KeyStore(database)
    secrets = {name: store.create(name, scopes=scopes).secret
               for name, scopes in (("alice", ["generate", "read"]), ("bob", ["generate", "read"]),
                                    ("ops", ["admin"]))}
    database.dispose()
    headers = {name: {"Authorization": f"Bearer {secret}"} for name, secret in secrets.items()}
    with ThreadServer(create_app(settings, engine=FakeEngine(size=64, steps=2))) as server:
        with httpx.Client(base_url=server.url, timeout=30) as http:
            theirs = http.post("/api/v1/jobs", json={"prompt": "bob key job", "steps": 2},
                               headers=headers["bob"])
            assert theirs.status_code == 202, theirs.text
            job = theirs.json()["id"]
            done = finished(httpx.Client(base_url=server.url, headers=headers["bob"], timeout=30), job)
            image = done["result"]["images"][0]["id"]
            for response in (
                http.get(f"/api/v1/jobs/{job}", headers=headers["alice"]),
                http.post(f"/api/v1/jobs/{job}/cancel", headers=headers["alice"]),
                http.get(f"/api/v1/jobs/{job}/events", headers=headers["alice"]),
                http.get(f"/api/v1/images/{image}", headers=headers["alice"]),
            ):
                assert_native_404(response)
            assert http.get("/api/v1/jobs", headers=headers["alice"]).json()["jobs"] == []
            assert http.get(f"/api/v1/images/{image}", headers=headers["ops"]).status_code == 200
            listed = http.get("/api/v1/jobs", headers=headers["ops"]).json()["jobs"]
            assert [j["id"] for j in listed] == [job]

            assert http.post("/sdapi/v1/options", json={"CLIP_stop_at_last_layers": 4},
                             headers=headers["alice"]).status_code == 200

            def clip_skip(name: str) -> int:
                options = http.get("/sdapi/v1/options", headers=headers[name]).json()
                return int(options["CLIP_stop_at_last_layers"])

            assert (clip_skip("alice"), clip_skip("bob"), clip_skip("ops")) == (4, 1, 1)
            a1111 = http.post("/sdapi/v1/txt2img", json={"prompt": "bob key a1111", "steps": 2},
                              headers=headers["bob"])
            assert a1111.status_code == 200
            assert json.loads(a1111.json()["info"])["clip_skip"] == 1

        # The WebSocket, with the key as ?token= (what a browser can send): only bob's own events.
        url = server.url.replace("http", "ws") + "/api/v1/events?token=" + secrets["bob"]
        async with websockets.connect(url) as ws:
            assert json.loads(await ws.recv())["event"] == "hello"
            async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
                await client.post("/api/v1/jobs", json={"prompt": "alice key ws", "steps": 2},
                                  headers=headers["alice"])
                mine = (await client.post("/api/v1/jobs", json={"prompt": "bob key ws", "steps": 2},
                                          headers=headers["bob"])).json()["id"]
            seen = []
            async with asyncio.timeout(20):
                while not (seen and seen[-1]["data"].get("job_id") == mine and seen[-1]["event"] in TERMINAL):
                    seen.append(json.loads(await ws.recv()))
        assert {m["data"]["job_id"] for m in seen} == {mine}


# -- the schema-driven fuzz run -------------------------------------------------------------------------

BOB_SECRET = "bobsecret7d1f0c"
# Not for the fuzzer: operations that stop the shared server (refused to alice anyway), and the
# multipart generation routes, which take no id and answer only the images they make (their own
# fuzz runs, tests/server/dialects/*/test_schemathesis.py, put real images in their file fields;
# schemathesis cannot generate invalid multipart bodies for them here).
FUZZ_EXCLUDED = (r"^/sdapi/v1/server-(stop|kill|restart)$"
                 r"|^/v1/generation/[^/]+/image-to-image|^/v2beta/|^/v1/images/(edits|variations)$")
FUZZ_EXAMPLES = 25
MAX_WAIT_S = 0.5


@dataclass
class BobsData:
    job_ids: list[str]
    image_ids: list[str]

    @property
    def secrets(self) -> list[bytes]:
        return [value.encode() for value in (*self.job_ids, *self.image_ids, BOB_SECRET)]


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    settings = isolated_settings(tmp_path_factory.mktemp("isolation-fuzz"), max_steps=50, max_batch_images=4,
                                 max_side=1024, max_pixels=1024 * 1024)
    yield from serve_isolated(settings, FakeEngine(size=64, steps=2))


@pytest.fixture(scope="module")
def bobs(fuzz_server: Server) -> BobsData:
    """What bob made before alice's fuzz run: jobs in two dialects, an upload, saved options."""
    with fuzz_server.client(BOB) as bob:
        jobs = [native_job(bob, prompt=f"{BOB_SECRET} native", metadata={"who": BOB_SECRET})]
        raw = base64.b64decode(png_b64("green"))
        upload = bob.post("/api/v1/uploads", content=raw,
                          headers={"Content-Type": "application/octet-stream"})
        jobs.append(native_job(bob, prompt=f"{BOB_SECRET} img2img", mode="img2img",
                               init_image=upload.json()["id"]))
        a1111 = bob.post("/sdapi/v1/txt2img", json={"prompt": f"{BOB_SECRET} a1111", "steps": 2})
        assert a1111.status_code == 200
        assert bob.post("/sdapi/v1/options", json={"samples_filename_pattern": BOB_SECRET}).status_code == 200
        running = bob.post("/api/v1/jobs", json={"prompt": f"slow {BOB_SECRET}", "steps": 2})
        listed = bob.get("/api/v1/jobs", params={"limit": 200}).json()["jobs"]
    job_ids = [j["id"] for j in listed]
    assert running.json()["id"] in job_ids and len(job_ids) == 4
    image_ids = {upload.json()["id"]}
    for job in jobs + listed:
        image_ids |= {i["id"] for i in (job.get("result") or {}).get("images") or []}
        image_ids |= {i for i in job["request"].get("init_images") or []}
    return BobsData(job_ids, sorted(image_ids))


@pytest.fixture(scope="module")
def isolation_schema(fuzz_server: Server) -> schemathesis.schemas.BaseSchema:
    # The fuzzing phase only: the coverage phase's thousands of boundary cases per operation are
    # each dialect's own fuzz run's business (tests/server/dialects/*/test_schemathesis.py).
    config = SchemathesisConfig.from_dict({"phases": {"coverage": {"enabled": False}}})
    return schemathesis.openapi.from_url(f"{fuzz_server.url}/openapi.json", config=config, headers=ALICE)


fuzz_schema = schemathesis.pytest.from_fixture("isolation_schema").exclude(path_regex=FUZZ_EXCLUDED)


def assert_nothing_of_bobs(response: Any, bobs: BobsData, what: str, *, sent: str = "") -> None:
    """No 5xx, and none of bob's ids or text in the body, but for ``sent``: the id alice's request
    named itself, which a 404 may echo ("job ... not found")."""
    assert response.status_code < 500, f"{what} -> {response.status_code} {response.text[:500]}"
    body = response.content
    leaked = [secret.decode() for secret in bobs.secrets if secret in body and secret != sent.encode()]
    assert not leaked, f"{what} -> {response.status_code} holds bob's {leaked}: {body[:500]!r}"


@pytest.mark.slow
@fuzz_schema.parametrize()
@hypothesis.settings(max_examples=FUZZ_EXAMPLES, deadline=None, derandomize=True,
                     suppress_health_check=list(hypothesis.HealthCheck))
def test_fuzz_as_alice_never_reaches_bobs_data(case: schemathesis.Case, fuzz_server: Server,
                                              bobs: BobsData) -> None:
    wait = (case.query or {}).get("wait")
    if isinstance(wait, int | float) and not isinstance(wait, bool):
        case.query["wait"] = min(wait, MAX_WAIT_S)
    response = case.call(base_url=fuzz_server.url, headers=ALICE, timeout=30)
    assert_nothing_of_bobs(response, bobs, f"{case.method} {case.formatted_path}")
    # The same request naming bob's ids: refused (as ids that do not exist), never his data.
    probes = {"job_id": bobs.job_ids, "image_id": bobs.image_ids}
    for name, values in probes.items():
        if name not in (case.path_parameters or {}):
            continue
        for value in values:
            case.path_parameters[name] = value
            probe = case.call(base_url=fuzz_server.url, headers=ALICE, timeout=30)
            assert_nothing_of_bobs(probe, bobs, f"{case.method} {case.formatted_path}", sent=value)
            assert probe.status_code >= 400, f"{case.method} {case.formatted_path} -> {probe.status_code}"
