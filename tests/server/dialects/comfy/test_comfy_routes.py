"""The ComfyUI dialect on the null engine (blank pictures of the right size, every sampler step
reported), driven by a ComfyUI user's script over real HTTP and WebSocket on loopback."""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from sdgate.core.jobs import JobState
from sdgate.server.app import create_app
from sdgate.server.dialects.comfy import translate
from tests import comfy_graphs
from tests.harness import ThreadServer
from tests.server.dialects.comfy.conftest import ComfyScript, null_settings

CKPT = "v1-5-pruned-emaonly.safetensors"


def small(**kw: Any) -> dict[str, Any]:
    return comfy_graphs.txt2img(CKPT, width=64, height=64, steps=3, **kw)


@pytest.mark.parametrize("prefix", ["", "/api"])
def test_the_websocket_example_script_runs(null_server: str, prefix: str) -> None:
    script = ComfyScript(null_server, prefix=prefix)
    ws = script.connect()
    try:
        r = script.queue_prompt(small(filename_prefix="tests/pic"))
        assert r.status_code == 200, r.text
        answer = r.json()
        assert set(answer) == {"prompt_id", "number", "node_errors"} and answer["node_errors"] == {}
        run = script.wait(ws, answer["prompt_id"])
    finally:
        ws.close()
    types = run.types()
    assert types[0] == "status" and run.messages[0]["data"]["sid"] == script.client_id
    assert types.index("execution_start") < types.index("execution_cached") < types.index("executing")
    assert types.count("execution_cached") == 1 and types.index("executing") < types.index("executed")
    assert types[-2:] == ["execution_success", "executing"]
    executing = [d["node"] for d in run.of("executing")]
    assert executing[-1] is None and {"3", "9"} <= set(executing)
    steps = [(d["value"], d["max"]) for d in run.of("progress") if d["node"] == "3"]
    assert steps and steps[-1] == (3, 3)
    executed = run.of("executed")
    assert executed[0]["node"] == "9"
    image = executed[0]["output"]["images"][0]
    assert image["subfolder"] == "tests" and image["type"] == "output"
    entry = script.history(run.prompt_id)[run.prompt_id]
    assert entry["status"]["status_str"] == "success" and entry["status"]["completed"] is True
    assert entry["prompt"][1] == run.prompt_id and entry["prompt"][4] == ["9"]
    assert entry["outputs"]["9"]["images"] == [image]
    [picture] = script.images(run.prompt_id)
    assert picture.size == (64, 64)


def test_invalid_graphs_are_400_naming_the_node_and_leave_the_queue_alone(null_server: str) -> None:
    script = ComfyScript(null_server)
    missing_link = small()
    missing_link["8"]["inputs"]["samples"] = ["42", 0]
    unknown_node = small()
    unknown_node["9"]["class_type"] = "NoSuchNode"
    bad_enum = small(sampler_name="euler_but_not")
    no_model = comfy_graphs.txt2img("nope.safetensors")
    missing_file = comfy_graphs.img2img(CKPT, "not-uploaded.png")
    cases = [(missing_link, "8", "VAEDecode"), (bad_enum, "3", "KSampler"), (no_model, "4", None),
             (missing_file, "10", "LoadImage")]
    for graph, node, class_type in cases:
        r = script.queue_prompt(graph)
        assert r.status_code == 400, r.text
        body = r.json()
        assert set(body) == {"error", "node_errors"} and node in body["node_errors"], body
        if class_type:
            assert body["node_errors"][node]["class_type"] == class_type
    r = script.queue_prompt(bad_enum)
    reason = r.json()["node_errors"]["3"]["errors"][0]
    assert reason["type"] == "value_not_in_list" and reason["extra_info"]["input_name"] == "sampler_name"
    r = script.queue_prompt(unknown_node)
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_prompt"
    for body in ({}, {"prompt": "not a graph"}, {"prompt": {}}, {"prompt": small(), "number": "x"}):
        r = script.post("/prompt", body)
        assert r.status_code == 400, (body, r.text)
    r = script.post("/prompt", data=b"{not json")
    assert r.status_code == 400
    assert script.get("/prompt").json() == {"exec_info": {"queue_remaining": 0}}
    assert script.get("/queue").json() == {"queue_running": [], "queue_pending": []}
    assert script.get("/history").json() == {}


def test_view_refuses_paths_out_of_the_folders(null_server: str) -> None:
    script = ComfyScript(null_server)
    assert script.upload(Image.new("RGB", (8, 8)), "a.png").status_code == 200
    assert script.get("/view", filename="a.png", type="input").status_code == 200
    for params, status in [
        ({"filename": "../a.png", "type": "input"}, 400),
        ({"filename": "/etc/passwd"}, 400),
        ({"filename": "..%2Fa.png"}, 400),
        ({"filename": "a.png", "type": "input", "subfolder": "../.."}, 403),
        ({"filename": "a.png", "type": "input", "subfolder": "/etc"}, 403),
        ({"filename": "a.png", "type": "bogus"}, 400),
        ({"filename": "b.png", "type": "input"}, 404),
        ({"filename": "ComfyUI_00001_job_00000000000000000000000000_.png"}, 404),
        ({}, 400),
    ]:
        assert script.get("/view", **params).status_code == status, params


def test_uploads_rename_reuse_overwrite_and_list_in_object_info(null_server: str) -> None:
    script = ComfyScript(null_server)
    red, blue = Image.new("RGB", (16, 16), "red"), Image.new("RGB", (16, 16), "blue")
    assert script.upload(red, "x.png").json() == {"name": "x.png", "subfolder": "", "type": "input"}
    assert script.upload(red, "x.png").json()["name"] == "x.png"  # the same bytes: reused
    assert script.upload(blue, "x.png").json()["name"] == "x (1).png"
    assert script.upload(blue, "x.png", overwrite="true").json()["name"] == "x.png"
    assert script.upload(red, "y.png", subfolder="clips").json()["subfolder"] == "clips"
    viewed = Image.open(__import__("io").BytesIO(script.get("/view", filename="x.png", type="input").content))
    assert viewed.getpixel((0, 0)) == (0, 0, 255)
    names = script.get("/object_info/LoadImage").json()["LoadImage"]["input"]["required"]["image"][0]
    assert {"x.png", "x (1).png", "clips/y.png"} <= set(names)
    assert script.upload(red, "../evil.png").status_code == 400
    assert script.upload(red, "z.png", subfolder="../up").status_code == 400
    assert script.upload(red, "z.png", type="nope").status_code == 400
    r = script.post("/upload/image", None, files={"image": ("t.png", b"not an image", "image/png")})
    assert r.status_code == 400
    assert script.post("/upload/image", None, data={"type": "input"}).status_code == 400
    # A mask onto an upload: the original's pixels, the mask's alpha.
    mask = Image.new("RGBA", (16, 16), (0, 0, 0, 0))
    buf = __import__("io").BytesIO()
    mask.save(buf, format="PNG")
    r = script.post("/upload/mask", None, files={"image": ("m.png", buf.getvalue(), "image/png")},
                    data={"original_ref": '{"filename": "y.png", "subfolder": "clips", "type": "input"}'})
    assert r.status_code == 200, r.text
    masked = Image.open(__import__("io").BytesIO(
        script.get("/view", filename=r.json()["name"], type="input").content))
    assert masked.mode == "RGBA" and masked.getpixel((0, 0)) == (255, 0, 0, 0)


def test_server_info_routes(null_server: str) -> None:
    script = ComfyScript(null_server)
    info = script.get("/object_info").json()
    assert {"KSampler", "CheckpointLoaderSimple", "SaveImage", "LoadImage"} <= set(info)
    ckpts = info["CheckpointLoaderSimple"]["input"]["required"]["ckpt_name"][0]
    assert CKPT in ckpts
    assert script.get("/object_info/NoSuchNode").json() == {}
    assert "checkpoints" in script.get("/models").json()
    assert script.get("/models/loras").json() == ["ink.safetensors"]
    assert script.get("/models/nope").status_code == 404
    assert script.get("/embeddings").json() == []
    assert script.get("/features").json()["supports_preview_metadata"] is True
    stats = script.get("/system_stats").json()
    assert {"system", "devices"} <= set(stats) and stats["devices"]
    assert script.get("/api/object_info/KSampler").json()["KSampler"]["output"] == ["LATENT"]


def test_queue_delete_clear_front_and_numbers(tmp_path: Path, null_models: Path) -> None:
    """No workers: prompts stay queued, so the queue routes can be watched."""
    app = create_app(null_settings(tmp_path, null_models), run_workers=False)
    with ThreadServer(app) as server:
        script = ComfyScript(server.url)
        ids = [script.queue_prompt(small(seed=i)).json()["prompt_id"] for i in range(3)]
        front = script.queue_prompt(small(seed=9), front=True).json()
        numbered = script.queue_prompt(small(seed=10), number=7.5).json()
        assert front["number"] < 0 and numbered["number"] == 7.5
        pending = script.get("/queue").json()["queue_pending"]
        assert [item[1] for item in pending] == [*ids, front["prompt_id"], numbered["prompt_id"]]
        assert pending[0][2]["3"]["inputs"]["seed"] == 0 and pending[0][4] == ["9"]
        assert script.get("/prompt").json()["exec_info"]["queue_remaining"] == 5
        jobs = app.state.services.store
        head = jobs.claim_next("w")
        assert head is not None and translate.queue_item(head, front["prompt_id"])[1] == front["prompt_id"]
        assert script.post("/queue", {"delete": [ids[1]]}).status_code == 200
        left = [item[1] for item in script.get("/queue").json()["queue_pending"]]
        assert ids[1] not in left and ids[0] in left
        # /interrupt with the id of a prompt that is not running does nothing; without one it
        # stops the caller's running prompt.
        assert script.post("/interrupt", {"prompt_id": ids[0]}).status_code == 200
        assert jobs.pending_control(head.id) is None
        assert requests_post_raw(script.url + "/interrupt", b"").status_code == 200
        assert jobs.pending_control(head.id) is not None
        assert script.post("/queue", {"clear": True}).status_code == 200
        assert script.get("/queue").json()["queue_pending"] == []
        assert jobs.get(head.id).state is JobState.RUNNING  # clear leaves the running one
        assert script.get("/history").json() == {}  # cancelled before running: never in history
        assert script.post("/queue", {"delete": "nope"}).status_code == 400


def requests_post_raw(url: str, data: bytes) -> Any:
    import requests

    return requests.post(url, data=data, timeout=30)


def test_history_bounds_client_prompt_ids_and_delete(null_server: str) -> None:
    script = ComfyScript(null_server)
    ws = script.connect()
    try:
        ids = []
        for i in range(4):
            extra = {"prompt_id": "mine-1"} if i == 0 else {}
            prompt_id = script.queue_prompt(small(seed=i), **extra).json()["prompt_id"]
            script.wait(ws, prompt_id)
            ids.append(prompt_id)
        # A prompt id already used is not taken over: the prompt gets its job's id.
        again = script.queue_prompt(small(seed=99), prompt_id="mine-1").json()["prompt_id"]
        script.wait(ws, again)
    finally:
        ws.close()
    assert ids[0] == "mine-1" and again != "mine-1"
    assert list(script.get("/history").json()) == [*ids, again]
    assert list(script.get("/history", max_items=2).json()) == [ids[3], again]
    assert list(script.get("/history", max_items=2, offset=1).json()) == ids[1:3]
    assert script.get("/history", max_items=0).status_code == 400
    assert script.history("no-such-prompt") == {}
    assert script.post("/history", {"delete": [ids[0]]}).status_code == 200
    assert script.history(ids[0]) == {} and ids[0] not in script.get("/history").json()
    assert script.images(ids[1])  # deleting from history keeps the others' files
    assert script.post("/history", {"clear": True}).status_code == 200
    assert script.get("/history").json() == {}


def test_previews_reconnect_and_feature_flags(null_server: str) -> None:
    script = ComfyScript(null_server)
    ws = script.connect(flags={"supports_preview_metadata": True})
    try:
        first = __import__("json").loads(ws.recv())
        assert first["type"] == "status"
        prompt_id = script.queue_prompt(small()).json()["prompt_id"]
        run = script.wait(ws, prompt_id)
    finally:
        ws.close()
    assert run.of("feature_flags") and run.of("feature_flags")[0]["supports_preview_metadata"] is True
    for frame in run.frames:  # the null engine draws no preview; any frame must be well formed
        (kind,) = struct.unpack(">I", frame[:4])
        assert kind in (1, 4)
    # A reconnect with the same clientId takes the client id over from the old socket.
    old = script.connect()
    new = script.connect()
    try:
        prompt_id = script.queue_prompt(small()).json()["prompt_id"]
        assert script.wait(new, prompt_id).of("execution_success")
    finally:
        old.close()
        new.close()


def test_frames_are_comfyui_framing() -> None:
    plain = translate.preview_frame(b"JPEG")
    assert plain == b"\x00\x00\x00\x01\x00\x00\x00\x01JPEG"
    meta = translate.preview_frame(b"JPEG", metadata=translate.preview_metadata("3", "p"))
    (kind, size) = struct.unpack(">II", meta[:8])
    assert kind == 4 and __import__("json").loads(meta[8:8 + size])["node_id"] == "3"
    assert meta[8 + size:] == b"JPEG"
    assert translate.parse_output_name("a_b_00012_job_01ABC_.png") == ("job_01ABC", 11)
    assert translate.parse_output_name("ComfyUI_00001_.png") is None
    assert translate.split_prefix("../../etc/x") == ("etc", "x")


def test_a_prompt_that_ends_before_its_row_names_its_job_is_in_history(
    tmp_path: Path, null_models: Path
) -> None:
    """``POST /prompt`` records the job in the prompt's row just after the submit: a job that ends
    first (the client's ``executing: null`` comes at once) is still found, by its own id."""
    import sqlalchemy as sa

    from sdgate.core.results import GenerationResult
    from sdgate.jobs.schema import comfy_prompts

    app = create_app(null_settings(tmp_path, null_models), run_workers=False)
    with ThreadServer(app) as server:
        script = ComfyScript(server.url)
        mine = script.queue_prompt(small(), prompt_id="mine").json()["prompt_id"]
        ours = script.queue_prompt(small(seed=2)).json()["prompt_id"]
        services = app.state.services
        with services.database.begin() as conn:  # as if neither row were attached yet
            conn.execute(sa.update(comfy_prompts).values(job_id=None))
            conn.execute(sa.update(comfy_prompts).where(comfy_prompts.c.prompt_id == ours)
                         .values(prompt_id="pending-x"))
        for _ in range(2):
            job = services.store.claim_next("w")
            services.store.succeed(job.id, GenerationResult(), worker_id="w")
        assert mine == "mine" and list(script.history("mine")) == ["mine"]
        assert list(script.history(ours)) == [ours]


def test_blocked_text_and_limits_refuse_the_prompt_leaving_nothing(
    tmp_path: Path, null_models: Path
) -> None:
    """The content filter reads every CLIPTextEncode text; the per-caller queue limit is a 429;
    either way nothing is queued and no prompt id is used up."""
    blocklist = tmp_path / "blocklist.txt"
    blocklist.write_text("forbidden word\n")
    settings = null_settings(tmp_path, null_models, content_blocklist=blocklist, max_queued_per_principal=1,
                             api_auth="alice:pw")
    with ThreadServer(create_app(settings, run_workers=False)) as server:
        script = ComfyScript(server.url, auth=("alice", "pw"))
        r = script.queue_prompt(small(negative="fine", positive="a Forbidden  Word here"), prompt_id="p1")
        assert r.status_code == 400 and r.json()["error"]["type"] == "content_filtered"
        assert "6" in r.json()["error"]["message"]
        assert script.queue_prompt(small(), prompt_id="p1").json()["prompt_id"] == "p1"  # p1 was not used up
        r = script.queue_prompt(small(seed=2), prompt_id="p2")
        assert r.status_code == 429 and set(r.json()) == {"error", "node_errors"}
        assert [item[1] for item in script.get("/queue").json()["queue_pending"]] == ["p1"]
        r = script.queue_prompt(small(seed=3), prompt_id="p2")  # still free to use once there is room
        assert r.status_code == 429


def test_an_uploaded_picture_over_the_size_limit_is_refused_at_submit(
    tmp_path: Path, null_models: Path
) -> None:
    """The sizes of uploaded pictures are known when a graph is checked: a LoadImage of one larger
    than the server's limit is a 400 before any job exists."""
    with ThreadServer(create_app(null_settings(tmp_path, null_models, max_side=128))) as server:
        script = ComfyScript(server.url)
        assert script.upload(Image.new("RGB", (256, 64)), "wide.png").status_code == 200
        assert script.upload(Image.new("RGB", (64, 64)), "fits.png").status_code == 200
        r = script.queue_prompt(comfy_graphs.img2img(CKPT, "wide.png", steps=2))
        assert r.status_code == 400 and "10" in r.json()["node_errors"], r.text
        assert script.queue_prompt(comfy_graphs.img2img(CKPT, "fits.png", steps=2)).status_code == 200


def test_what_a_database_cannot_store_is_refused(null_server: str) -> None:
    """NUL in any text or key (PostgreSQL's JSONB refuses it), NaN, deep nesting: 400, nothing queued."""
    script = ComfyScript(null_server)
    text = small(positive="a\x00b")
    key = small()
    key["9"]["inputs"]["odd\x00key"] = 1
    for body in ({"prompt": text}, {"prompt": key}, {"prompt": small(), "extra_data": {"x": "\x00"}},
                 {"prompt": small(), "extra_data": {"x": float("nan")}},
                 {"prompt": small(), "extra_data": {"deep": __import__("functools").reduce(
                     lambda inner, _: {"a": inner}, range(100), {})}}):
        r = script.post("/prompt", data=__import__("json").dumps(body), headers={})
        assert r.status_code == 400, (body, r.text)
    assert script.get("/queue").json()["queue_pending"] == []
