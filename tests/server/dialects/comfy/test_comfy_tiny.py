"""The ComfyUI dialect end to end on the real diffusers engine with tiny random-weight models in a
ComfyUI-layout models folder (``checkpoints/``, ``loras/``), served by uvicorn on loopback and
driven by a ComfyUI user's script (``requests`` + ``websocket-client``) and by the SDK's own
ComfyUI backend."""

from __future__ import annotations

import io
import os
import struct
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests import comfy_graphs
from tests.harness import ThreadServer
from tests.server.dialects.comfy.conftest import ComfyScript

pytestmark = pytest.mark.slow

CKPT = "tiny-sd15.safetensors"


@pytest.fixture(scope="module")
def comfy_models(tiny_models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.engine.test_lora import make_lora

    root = tmp_path_factory.mktemp("comfy-models")
    (root / "checkpoints").mkdir()
    os.symlink(tiny_models_dir / "Stable-diffusion" / CKPT, root / "checkpoints" / CKPT)
    make_lora(root / "loras" / "ink.safetensors", "kohya", 1)
    return root


@pytest.fixture(scope="module")
def server(comfy_models: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    import torch

    from sdgate.server.app import create_app
    from sdgate.settings import Settings

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # results must not depend on how busy the machine is
    settings = Settings(data_dir=tmp_path_factory.mktemp("comfy-data"), models_dir=comfy_models, device="cpu",
                        worker_poll_s=0.02, preview_method="latent")
    try:
        with ThreadServer(create_app(settings)) as live:
            yield live.url
    finally:
        torch.set_num_threads(threads)


def run(script: ComfyScript, graph: dict, **extra: object) -> tuple[list[Image.Image], object]:
    ws = script.connect()
    try:
        r = script.queue_prompt(graph, **extra)
        assert r.status_code == 200, r.text
        done = script.wait(ws, r.json()["prompt_id"])
    finally:
        ws.close()
    assert done.of("execution_success"), done.messages
    return script.images(done.prompt_id), done


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.int16)


def test_txt2img_img2img_inpaint_lora_and_hires(server: str) -> None:
    script = ComfyScript(server)
    [base], done = run(script, comfy_graphs.txt2img(CKPT, width=64, height=64, steps=3, seed=5))
    assert base.size == (64, 64)
    assert [(d["value"], d["max"]) for d in done.of("progress") if d["node"] == "3"][-1] == (3, 3)
    [same], again = run(script, comfy_graphs.txt2img(CKPT, width=64, height=64, steps=3, seed=5))
    assert np.array_equal(pixels(base), pixels(same))  # same seed, same device: the same pixels
    # The executor served the unchanged nodes from its cache: said on /ws and in the history.
    (cached,) = [d["nodes"] for d in again.of("execution_cached")]  # one, before the first node ran
    assert "3" in cached and again.types().index("execution_cached") < again.types().index("executing")
    assert len(done.of("execution_cached")) == 1
    messages = script.history(again.prompt_id)[again.prompt_id]["status"]["messages"]
    assert dict(messages)["execution_cached"]["nodes"] == cached

    source = Image.new("RGBA", (64, 64), (200, 30, 30, 255))
    source.paste((0, 0, 0, 0), (16, 16, 48, 48))  # a transparent hole: LoadImage's mask
    name = script.upload(source, "source.png", overwrite="true").json()["name"]
    graph = comfy_graphs.img2img(CKPT, name, denoise=0.5, steps=3)
    [moved], _ = run(script, graph)
    assert moved.size == (64, 64)
    [painted], _ = run(script, comfy_graphs.inpaint(CKPT, name, steps=3))
    assert painted.size == (64, 64)

    graph = comfy_graphs.lora(CKPT, "ink.safetensors", seed=5)
    graph["3"]["inputs"]["steps"] = 3
    graph["5"]["inputs"].update(width=64, height=64)
    [inked], _ = run(script, graph)
    plain = comfy_graphs.txt2img(CKPT, width=64, height=64, steps=3, seed=5)
    [unlinked], _ = run(script, plain)
    assert not np.array_equal(pixels(inked), pixels(unlinked))

    hires = comfy_graphs.hires(CKPT, width=64, height=64)
    for node in hires.values():
        if node["class_type"] == "KSampler":
            node["inputs"]["steps"] = 2
    images, done = run(script, hires)
    assert images and images[-1].size[0] > 64
    samplers = {d["node"] for d in done.of("progress")}
    assert len(samplers) >= 2  # both passes reported their steps


def test_previews_arrive_as_comfyui_binary_frames(server: str) -> None:
    script = ComfyScript(server)
    _, done = run(script, comfy_graphs.txt2img(CKPT, width=64, height=64, steps=12, seed=1))
    assert done.frames, "no preview frame"
    kind, fmt = struct.unpack(">II", done.frames[0][:8])
    assert (kind, fmt) == (1, 1)
    assert Image.open(io.BytesIO(done.frames[0][8:])).format == "JPEG"


def test_reconnect_then_interrupt_the_running_prompt(server: str) -> None:
    """A reconnect with the same clientId is told the node its running prompt is on (and takes
    the prompt's events over); /interrupt stops it: execution_interrupted, then executing null."""
    import json

    script = ComfyScript(server)
    ws = script.connect()
    try:
        graph = comfy_graphs.txt2img(CKPT, width=64, height=64, steps=400, seed=2)
        prompt_id = script.queue_prompt(graph).json()["prompt_id"]
        while True:  # the first step's progress: it runs
            message = ws.recv()
            if isinstance(message, str) and '"progress"' in message:
                break
        again = script.connect()
    finally:
        ws.close()
    try:
        greeting = json.loads(again.recv())
        assert greeting["type"] == "status" and greeting["data"]["sid"] == script.client_id
        told = json.loads(again.recv())
        while told["type"] == "progress":  # steps heard while the node was being looked up
            told = json.loads(again.recv())
        assert told["type"] == "executing"
        assert told["data"] == {"node": "3", "display_node": "3", "prompt_id": prompt_id}
        assert script.post("/interrupt", {}).status_code == 200
        done = script.wait(again, prompt_id)
    finally:
        again.close()
    assert done.of("execution_interrupted") and not done.of("execution_success")
    status = script.history(prompt_id)[prompt_id]["status"]
    assert status["status_str"] == "error" and status["completed"] is False
    assert status["messages"][-1][0] == "execution_interrupted"


def test_the_sdk_comfyui_backend_generates_against_sdgate(server: str) -> None:
    import sdgate

    with sdgate.Client(f"comfyui+{server}") as client:
        result = client.txt2img("a red circle", width=64, height=64, steps=2, seed=3, model=CKPT)
    assert len(result.images) == 1
    assert result.images[0].size == (64, 64)
