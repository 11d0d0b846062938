"""``/sdapi/v1/interrogate``: the demo model's scenes captioned in the demo data set's words; A1111's
error rules otherwise."""

from __future__ import annotations

import base64
import io
import subprocess
import sys

import httpx
import numpy as np
import pytest
from PIL import Image

from sdgate.demo import dataset
from sdgate.demo.dataset import Scene, Shape

DEMO = "sdgate-demo-shapes"


def scene_png(scene: Scene, size: int = 256) -> str:
    """A scene drawn by the data set's own renderer (not the model), as base64 PNG."""
    pixels = dataset.render([scene], size)[0].permute(1, 2, 0).numpy()
    buf = io.BytesIO()
    Image.fromarray((pixels * 255).round().astype(np.uint8)).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def shape(kind: str, color: str, size: str, position: str) -> Shape:
    cx, cy = dataset.POSITIONS[position]
    return Shape(kind, color, size, position, cx, cy, dataset.RADIUS[size])


@pytest.fixture
async def demo_client(client: httpx.AsyncClient) -> httpx.AsyncClient:
    assert (await client.post("/sdapi/v1/options", json={"sd_model_checkpoint": DEMO})).status_code == 200
    return client


async def test_a_demo_scene_is_captioned_in_the_data_sets_words(demo_client: httpx.AsyncClient) -> None:
    red_circle = Scene("blue", (shape("circle", "red", "large", "center"),))
    r = await demo_client.post("/sdapi/v1/interrogate", json={"image": scene_png(red_circle)})
    assert r.status_code == 200
    assert r.json() == {"caption": "a large red circle on a blue background"}
    two = Scene(
        "white", (shape("star", "green", "small", "left"), shape("square", "purple", "large", "right"))
    )
    uri = "data:image/png;base64," + scene_png(two)
    caption = (await demo_client.post("/sdapi/v1/interrogate", json={"image": uri, "model": "clip"})).json()
    assert caption == {
        "caption": "a small green star on the left and a large purple square on the right "
        "on a white background"
    }


async def test_captions_parse_back_to_the_scene(demo_client: httpx.AsyncClient) -> None:
    """What makes a caption useful as a prompt: the data set's parser reads the same scene back."""
    for i in range(6):
        sample = dataset.make_sample(dataset.EVAL_BASE + i)
        r = await demo_client.post("/sdapi/v1/interrogate", json={"image": scene_png(sample.scene)})
        parsed = dataset.parse_caption(r.json()["caption"])
        assert parsed.background == sample.scene.background
        want = sorted((s.color, s.kind, s.size, s.position) for s in sample.scene.shapes)
        got = sorted((s.color, s.kind, s.size, s.position or "center") for s in parsed.shapes)
        assert got == want, r.json()["caption"]


async def test_deepdanbooru_gives_tags(demo_client: httpx.AsyncClient) -> None:
    scene = Scene("yellow", (shape("ring", "black", "small", "top"),))
    r = await demo_client.post(
        "/sdapi/v1/interrogate", json={"image": scene_png(scene), "model": "deepdanbooru"}
    )
    assert r.json() == {"caption": "small black ring on the top, yellow background"}


async def test_webuiapi_interrogate(demo_client: httpx.AsyncClient) -> None:
    webuiapi = pytest.importorskip("webuiapi")
    scene = Scene("green", (shape("triangle", "orange", "large", "center"),))
    r = await demo_client.post("/sdapi/v1/interrogate", json={"image": scene_png(scene), "model": "clip"})
    api = webuiapi.WebUIApi(username="u", password="p")  # parses the response as webuiapi does
    assert api._to_api_result(_AsRequests(r)).info == "a large orange triangle on a green background"


async def test_a1111_error_rules(demo_client: httpx.AsyncClient) -> None:
    for body in ({}, {"image": ""}, {"image": None}):
        r = await demo_client.post("/sdapi/v1/interrogate", json=body)
        assert r.status_code == 404 and r.json()["detail"] == "Image not found"
    png = scene_png(Scene("blue", (shape("circle", "red", "large", "center"),)), 64)
    r = await demo_client.post("/sdapi/v1/interrogate", json={"image": png, "model": "blip"})
    assert r.status_code == 404 and r.json()["detail"].startswith("Model not found")
    assert "blip" in r.json()["detail"]


@pytest.mark.parametrize("image", ["bm90IGFuIGltYWdl", "!!!not base64!!!", "data:image/png;base64,AAAA"])
async def test_garbage_images_are_400s(demo_client: httpx.AsyncClient, image: str) -> None:
    r = await demo_client.post("/sdapi/v1/interrogate", json={"image": image})
    assert r.status_code == 400
    assert set(r.json()) == {"error", "detail", "body", "errors"} and "image" in r.json()["detail"]


async def test_other_checkpoints_name_the_missing_interrogator(client: httpx.AsyncClient) -> None:
    png = scene_png(Scene("blue", (shape("circle", "red", "large", "center"),)), 64)
    for model, name in (("clip", "CLIP"), ("deepdanbooru", "DeepDanbooru")):
        r = await client.post("/sdapi/v1/interrogate", json={"image": png, "model": model})
        assert r.status_code == 400
        assert f"{name} interrogator" in r.json()["detail"] and "not installed" in r.json()["detail"]


def test_the_interrogation_path_imports_without_torch() -> None:
    code = (
        "import sys\n"
        "import sdgate.server.dialects.a1111.interrogate, sdgate.demo.caption\n"
        "print(','.join(m for m in ('torch', 'diffusers') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == ""


class _AsRequests:
    """An httpx response seen through the ``requests`` attributes webuiapi reads."""

    def __init__(self, response: httpx.Response) -> None:
        self.status_code = response.status_code
        self.text = response.text
        self._json = response.json()

    def json(self) -> object:
        return self._json
