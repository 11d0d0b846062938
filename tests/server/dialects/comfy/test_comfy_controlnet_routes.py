"""ControlNet graphs through the ComfyUI dialect on the null engine: ``/object_info`` offers the
models folder's ControlNet files as ComfyUI lists them, ``/prompt`` validates the names against
that list and runs the graph at the asked size."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from sdgate.server.app import create_app
from tests import comfy_graphs
from tests.fakes import write_fake_checkpoint
from tests.harness import ThreadServer
from tests.server.dialects.comfy.conftest import ComfyScript, null_settings

CKPT = "v1-5-pruned-emaonly.safetensors"
FILES = ("canny.safetensors", "sd15/depth/diffusion_pytorch_model.safetensors", "tile.pth")


@pytest.fixture
def cn_server(tmp_path: Path) -> Iterator[str]:
    models = tmp_path / "models"
    write_fake_checkpoint(models / "checkpoints" / CKPT)
    write_fake_checkpoint(models / "controlnet" / FILES[0])
    write_fake_checkpoint(models / "controlnet" / FILES[1])
    (models / "controlnet" / "sd15" / "depth" / "config.json").write_text("{}")
    write_fake_checkpoint(models / "ControlNet" / FILES[2])  # A1111's folder is read too
    with ThreadServer(create_app(null_settings(tmp_path, models))) as server:
        yield server.url


def test_object_info_offers_the_controlnet_files(cn_server: str) -> None:
    script = ComfyScript(cn_server)
    info = script.get("/object_info/ControlNetLoader").json()["ControlNetLoader"]
    assert set(FILES) <= set(info["input"]["required"]["control_net_name"][0])  # and the built-in demo's
    everything = script.get("/object_info").json()
    assert everything["ControlNetApply"]["deprecated"] is True
    assert everything["ControlNetApplyAdvanced"]["output_name"] == ["positive", "negative"]


@pytest.mark.parametrize("advanced", [False, True])
def test_a_controlnet_prompt_runs_at_the_asked_size(cn_server: str, advanced: bool) -> None:
    script = ComfyScript(cn_server)
    assert script.upload(Image.new("RGB", (96, 64)), "edges.png").status_code == 200
    prompt = comfy_graphs.controlnet(
        CKPT, FILES[1], "edges.png", advanced=advanced, width=64, height=64, steps=2
    )
    ws = script.connect()
    try:
        r = script.queue_prompt(prompt)
        assert r.status_code == 200, r.text
        run = script.wait(ws, r.json()["prompt_id"])
    finally:
        ws.close()
    assert "execution_success" in run.types()
    assert {"10", "11", "12", "3"} <= {d["node"] for d in run.of("executing")}
    assert [picture.size for picture in script.images(run.prompt_id)] == [(64, 64)]


def test_an_unknown_controlnet_is_a_400_naming_the_loader(cn_server: str) -> None:
    script = ComfyScript(cn_server)
    assert script.upload(Image.new("RGB", (64, 64)), "edges.png").status_code == 200
    r = script.queue_prompt(comfy_graphs.controlnet(CKPT, "missing.safetensors", "edges.png"))
    assert r.status_code == 400
    errors = r.json()["node_errors"]["11"]
    assert errors["class_type"] == "ControlNetLoader"
    assert errors["errors"][0]["type"] == "value_not_in_list"
    assert errors["errors"][0]["extra_info"]["input_name"] == "control_net_name"
