"""/sdapi/v1 LoRA, embedding and style lists, and what styles / variation seeds do to a request."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from sdgate.server.app import create_app
from sdgate.settings import Settings
from tests.fakes import FakeEngine

STYLES = 'name,prompt,negative_prompt\nink,"{prompt}, ink drawing",blurry\nsharp,sharp focus,\n'


def write_safetensors(path: Path, metadata: dict[str, str]) -> None:
    """A valid safetensors file with no tensors: the header is all /loras reads."""
    header = json.dumps({"__metadata__": metadata}).encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(len(header).to_bytes(8, "little") + header)


@pytest.fixture
def models_dir(models_dir: Path) -> Path:
    write_safetensors(
        models_dir / "Lora" / "ink-v2.safetensors", {"ss_output_name": "ink", "ss_network_dim": "4"}
    )
    write_safetensors(models_dir / "loras" / "plain.safetensors", {})
    write_safetensors(models_dir / "embeddings" / "badhands.safetensors", {})
    return models_dir


@pytest.fixture
def settings(settings: Settings) -> Settings:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    (settings.data_dir / "styles.csv").write_text(STYLES)
    return settings


async def test_loras_list_names_aliases_and_metadata(client: httpx.AsyncClient, models_dir: Path) -> None:
    r = await client.get("/sdapi/v1/loras")
    assert r.status_code == 200
    by_name = {item["name"]: item for item in r.json()}
    assert set(by_name) == {"ink-v2", "plain"}
    assert by_name["ink-v2"]["alias"] == "ink" and by_name["plain"]["alias"] == "plain"
    assert by_name["ink-v2"]["metadata"] == {"ss_output_name": "ink", "ss_network_dim": "4"}
    assert Path(by_name["ink-v2"]["path"]) == (models_dir / "Lora" / "ink-v2.safetensors").resolve()
    # A file added later shows up; refresh answers null.
    write_safetensors(models_dir / "Lora" / "new.safetensors", {})
    assert (await client.post("/sdapi/v1/refresh-loras")).json() is None
    assert "new" in {item["name"] for item in (await client.get("/sdapi/v1/loras")).json()}


async def test_embeddings_are_listed_as_skipped(client: httpx.AsyncClient) -> None:
    body = (await client.get("/sdapi/v1/embeddings")).json()
    assert body["loaded"] == {} and set(body["skipped"]) == {"badhands"}
    assert (await client.post("/sdapi/v1/refresh-embeddings")).status_code == 200


async def test_prompt_styles(client: httpx.AsyncClient) -> None:
    r = await client.get("/sdapi/v1/prompt-styles")
    assert r.json() == [
        {"name": "ink", "prompt": "{prompt}, ink drawing", "negative_prompt": "blurry"},
        {"name": "sharp", "prompt": "sharp focus", "negative_prompt": ""},
    ]


async def test_styles_are_merged_into_the_prompts(client: httpx.AsyncClient, engine: FakeEngine) -> None:
    payload = {"prompt": "a cat", "negative_prompt": "ugly", "styles": ["ink", "sharp", "nope"], "steps": 1}
    r = await client.post("/sdapi/v1/txt2img", json=payload)
    assert r.status_code == 200, r.text
    request = engine.calls[-1]
    assert request.prompt == "a cat, ink drawing, sharp focus"
    assert request.negative_prompt == "ugly, blurry"
    assert json.loads(r.json()["info"])["styles"] == ["ink", "sharp", "nope"]


async def test_disable_extra_networks_strips_the_tags(client: httpx.AsyncClient, engine: FakeEngine) -> None:
    payload = {"prompt": "a cat <lora:ink:1>, <lyco:x>", "disable_extra_networks": True, "steps": 1}
    assert (await client.post("/sdapi/v1/txt2img", json=payload)).status_code == 200
    assert engine.calls[-1].prompt == "a cat , "


async def test_variation_seed_reaches_the_engine(client: httpx.AsyncClient, engine: FakeEngine) -> None:
    payload = {"seed": 5, "subseed": 9, "subseed_strength": 0.5, "batch_size": 2, "steps": 1}
    r = await client.post("/sdapi/v1/txt2img", json=payload)
    assert r.status_code == 200, r.text
    request = engine.calls[-1]
    assert request.subseed_strength == 0.5
    assert request.seeds() == [5, 5] and request.subseeds() == [9, 10]  # A1111's all_seeds/all_subseeds
    assert json.loads(r.json()["info"])["subseed_strength"] == 0.5


async def test_seed_resize_reaches_the_engine(client: httpx.AsyncClient, engine: FakeEngine) -> None:
    r = await client.post("/sdapi/v1/txt2img", json={"seed_resize_from_w": 256, "seed_resize_from_h": 256})
    assert r.status_code == 200, r.text
    request = engine.calls[-1]
    assert (request.seed_resize_from_w, request.seed_resize_from_h) == (256, 256)
    r = await client.post("/sdapi/v1/txt2img", json={"seed_resize_from_w": 250, "seed_resize_from_h": 256})
    assert r.status_code == 400 and r.json()["detail"].startswith("seed_resize_from_w:")


@pytest.fixture
async def auth_client(settings: Settings, engine: FakeEngine) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(settings.model_copy(update={"api_auth": "alice:pw"}), engine=engine)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://sdgate") as c:
            yield c


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/loras"), ("POST", "/refresh-loras"), ("GET", "/embeddings"), ("GET", "/prompt-styles")],
)
async def test_every_list_needs_auth(auth_client: httpx.AsyncClient, method: str, path: str) -> None:
    assert (await auth_client.request(method, f"/sdapi/v1{path}")).status_code == 401
    ok = await auth_client.request(method, f"/sdapi/v1{path}", auth=("alice", "pw"))
    assert ok.status_code == 200
