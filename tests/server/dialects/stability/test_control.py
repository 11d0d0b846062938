"""Stability v2beta control/sketch and control/structure through a real uvicorn on loopback: the
image becomes one ControlNet unit (the fake engine receives it), answered like generate/*."""

from __future__ import annotations

import io
import json
import struct
from pathlib import Path

import httpx
import pytest
from PIL import Image, ImageDraw

from sdgate.core.models import ModelCatalog
from sdgate.core.requests import ControlNetUnit, Mode
from tests.fakes import FakeEngine, write_fake_checkpoint

URL = "/v2beta/stable-image/control/{}"


def write_controlnet(path: Path) -> None:
    shapes = {"input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": [320, 768]}
    header = {k: {"dtype": "F16", "shape": s, "data_offsets": [0, 0]} for k, s in shapes.items()}
    data = json.dumps(header).encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(struct.pack("<Q", len(data)) + data)


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("models")
    write_fake_checkpoint(root / "Stable-diffusion" / "alpha.safetensors")
    write_controlnet(root / "ControlNet" / "control_v11p_sd15_canny.safetensors")
    write_controlnet(root / "ControlNet" / "control_v11p_sd15_scribble.safetensors")
    return root


def sketch(background: str = "white", ink: str = "black", size: tuple[int, int] = (96, 64)) -> bytes:
    image = Image.new("RGB", size, background)
    ImageDraw.Draw(image).line((8, 8, 80, 56), fill=ink, width=3)
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def post(live: str, service: str, data: dict[str, str], image: bytes | None = None,
         accept: str = "image/*") -> httpx.Response:
    files = {"image": ("sketch.png", image, "image/png")} if image is not None else {"none": ""}
    return httpx.post(live + URL.format(service), data=data, files=files,
                      headers={"authorization": "Bearer sk-x", "accept": accept}, timeout=30)


def test_sketch_inverts_dark_lines_for_a_scribble_controlnet(live: str, engine: FakeEngine) -> None:
    r = post(live, "sketch", {"prompt": "a castle", "seed": "7", "negative_prompt": "fog"}, sketch())
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "image/png" and r.headers["seed"] == "7"
    gen = engine.calls[-1]
    assert (gen.mode, gen.prompt, gen.negative_prompt, gen.width, gen.height) == (
        Mode.TXT2IMG, "a castle", "fog", 96, 64)
    (unit,) = gen.controlnets
    assert unit == ControlNetUnit(model="control_v11p_sd15_scribble", image=unit.image, module="invert",
                                  weight=0.7)
    (pair,) = engine.inputs[-1].controls(gen)
    assert pair[1] is not None and pair[1].size == (96, 64)


def test_a_dark_sketch_gets_its_lines_drawn(live: str, engine: FakeEngine) -> None:
    r = post(live, "sketch", {"prompt": "x", "control_strength": "0.4"}, sketch("black", "white"))
    assert r.status_code == 200, r.text
    (unit,) = engine.calls[-1].controlnets
    assert (unit.module, unit.weight) == ("scribble_xdog", 0.4)


def test_structure_uses_canny_and_answers_json(live: str, engine: FakeEngine) -> None:
    r = post(live, "structure", {"prompt": "a house", "control_strength": "0.3", "output_format": "jpeg",
                                 "style_preset": "anime", "seed": "5"}, sketch(), accept="application/json")
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"image", "finish_reason", "seed"} and body["seed"] == 5
    gen = engine.calls[-1]
    assert gen.prompt.startswith("a house, ")
    (unit,) = gen.controlnets
    assert (unit.model, unit.module, unit.weight) == ("control_v11p_sd15_canny", "canny", 0.3)


@pytest.mark.parametrize(
    ("service", "data", "image", "status", "word"),
    [
        ("sketch", {"prompt": "x"}, False, 400, "image"),
        ("sketch", {}, True, 400, "prompt"),
        ("structure", {"prompt": "x", "control_strength": "1.5"}, True, 400, "control_strength"),
        ("structure", {"prompt": "x", "output_format": "gif"}, True, 400, "output_format"),
        ("style", {"prompt": "x"}, True, 404, "sketch or structure"),
    ],
)
def test_refusals_in_the_v2_shape(live: str, engine: FakeEngine, service: str, data: dict[str, str],
                                  image: bool, status: int, word: str) -> None:
    before = len(engine.calls)
    r = post(live, service, data, sketch() if image else None)
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"id", "name", "errors"} and word in body["errors"][0]
    assert len(engine.calls) == before


def test_no_controlnet_installed_is_a_404_saying_what_to_install(
    live: str, engine: FakeEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = ModelCatalog.list_files

    def without_controlnets(self: ModelCatalog, kind: str) -> list:  # type: ignore[type-arg]
        return [] if kind == "controlnet" else original(self, kind)

    monkeypatch.setattr(ModelCatalog, "list_files", without_controlnets)
    before = len(engine.calls)
    r = post(live, "structure", {"prompt": "x"}, sketch())
    assert r.status_code == 404, r.text
    body = r.json()
    assert body["name"] == "not_found"
    assert "ControlNet" in body["errors"][0] and "'canny'" in body["errors"][0]
    assert len(engine.calls) == before


def test_openapi_lists_the_control_routes(live: str) -> None:
    paths = httpx.get(live + "/openapi.json", headers={"authorization": "Bearer sk-x"}).json()["paths"]
    form = paths["/v2beta/stable-image/control/{service}"]["post"]["requestBody"]["content"]
    schema = form["multipart/form-data"]["schema"]
    assert {"image", "prompt", "control_strength"} <= set(schema["properties"])
    assert {"image", "prompt"} <= set(schema["required"])
