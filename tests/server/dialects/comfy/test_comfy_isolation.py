"""Two callers on one sdgate, each with an API key sent as ComfyUI clients send one (``Authorization:
Bearer`` on HTTP, ``?token=`` on /ws): neither sees, stops or receives the other's prompts."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from sdgate.jobs.database import create_db_engine, ensure_schema
from sdgate.jobs.keys import KeyStore
from sdgate.server.app import create_app
from tests import comfy_graphs
from tests.harness import ThreadServer
from tests.server.dialects.comfy.conftest import ComfyScript, null_settings

CKPT = "v1-5-pruned-emaonly.safetensors"


@pytest.fixture
def two_callers(tmp_path: Path, null_models: Path) -> Iterator[tuple[ComfyScript, ComfyScript]]:
    settings = null_settings(tmp_path, null_models, auth="keys")
    engine = create_db_engine(settings.database_url)
    ensure_schema(engine)
    keys = KeyStore(engine)
    alice = keys.create("alice", scopes=["generate", "read"]).secret
    bob = keys.create("bob", scopes=["generate", "read"]).secret
    engine.dispose()
    with ThreadServer(create_app(settings)) as server:
        # The same client id on purpose: it must not let bob's socket hear alice's prompt.
        yield (ComfyScript(server.url, token=alice, client_id="shared"),
               ComfyScript(server.url, token=bob, client_id="shared"))


def test_another_caller_cannot_see_stop_or_hear_my_prompts(
    two_callers: tuple[ComfyScript, ComfyScript],
) -> None:
    alice, bob = two_callers
    assert alice.upload(Image.new("RGB", (8, 8), "red"), "mine.png").status_code == 200
    bob_ws = bob.connect()
    alice_ws = alice.connect()
    try:
        graph = comfy_graphs.txt2img(CKPT, width=64, height=64, steps=2)
        prompt_id = alice.queue_prompt(graph).json()["prompt_id"]
        run = alice.wait(alice_ws, prompt_id)
        assert run.of("execution_success")
        # bob's socket heard nothing of it (its status on connect at most).
        bob_ws.settimeout(0.5)
        heard = []
        try:
            while True:
                heard.append(json.loads(bob_ws.recv()))
        except Exception:  # the timeout: nothing more
            pass
        assert all(m["type"] == "status" for m in heard), heard
        assert all(m["data"]["status"]["exec_info"]["queue_remaining"] == 0 for m in heard)
    finally:
        alice_ws.close()
        bob_ws.close()
    entry = alice.history(prompt_id)[prompt_id]
    image = entry["outputs"]["9"]["images"][0]
    assert bob.history(prompt_id) == {}
    assert bob.get("/history").json() == {}
    view = {"filename": image["filename"], "subfolder": image["subfolder"], "type": image["type"]}
    assert alice.get("/view", **view).status_code == 200
    assert bob.get("/view", **view).status_code == 404
    assert bob.get("/view", filename="mine.png", type="input").status_code == 404
    names = bob.get("/object_info/LoadImage").json()["LoadImage"]["input"]["required"]["image"][0]
    assert "mine.png" not in names
    r = bob.queue_prompt(comfy_graphs.img2img(CKPT, "mine.png"))  # alice's file is not bob's to load
    assert r.status_code == 400 and "10" in r.json()["node_errors"]
    # bob's history delete and queue delete do nothing to alice's prompt.
    assert bob.post("/history", {"delete": [prompt_id]}).status_code == 200
    assert bob.post("/history", {"clear": True}).status_code == 200
    assert prompt_id in alice.get("/history").json()
    # No key, or a wrong one: refused, on HTTP and on the socket.
    assert ComfyScript(alice.url).get("/history").status_code == 401
    with pytest.raises(Exception):  # noqa: B017 - websocket-client's handshake error
        ComfyScript(alice.url, token="sdg_" + "W" * 43).connect()
