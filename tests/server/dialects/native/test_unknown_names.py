"""Native API: a name the server does not have is a 404 naming it, checked before any job exists;
never a silent swap to something else (issue 12, item 2)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from sdgate.settings import Settings
from tests.fakes import FakeEngine
from tests.server.dialects.native.conftest import serve, wait_state

STYLES = "name,prompt,negative_prompt\nink,{prompt} in ink,blurry\n"


@pytest.fixture
def names_settings(native_settings: Settings, models_dir: Path) -> Settings:
    (models_dir / "Lora").mkdir(parents=True)
    (models_dir / "Lora" / "detail.safetensors").write_bytes(b"\0" * 16)
    (models_dir / "VAE").mkdir(parents=True)
    (models_dir / "VAE" / "clear.safetensors").write_bytes(b"\0" * 16)
    native_settings.data_dir.mkdir(parents=True, exist_ok=True)
    (native_settings.data_dir / "styles.csv").write_text(STYLES, encoding="utf-8")
    return native_settings


@pytest.fixture
async def names_api(names_settings: Settings, engine: FakeEngine) -> AsyncIterator[httpx.AsyncClient]:
    async with serve(names_settings, engine) as client:
        yield client


async def job_count(api: httpx.AsyncClient) -> int:
    return len((await api.get("/api/v1/jobs")).json()["jobs"])


UNKNOWN: list[tuple[dict[str, Any], str, str, str]] = [
    ({"model": "nosuch-model"}, "model_not_found", "model",
     "model: no model named 'nosuch-model'; see GET /api/v1/models or sdgate models"),
    ({"refiner": "nosuch-refiner"}, "model_not_found", "refiner",
     "refiner: no model named 'nosuch-refiner'; see GET /api/v1/models or sdgate models"),
    ({"hires": {"scale": 1.5, "checkpoint": "nope"}}, "model_not_found", "hires.checkpoint",
     "hires.checkpoint: no model named 'nope'; see GET /api/v1/models or sdgate models"),
    ({"vae": "nosuch-vae"}, "not_found", "vae", "vae: no VAE named 'nosuch-vae'; see GET /api/v1/vaes"),
    ({"loras": [{"name": "detail"}, {"name": "nosuch-lora"}]}, "not_found", "loras.1.name",
     "loras.1.name: no LoRA named 'nosuch-lora'; see GET /api/v1/loras"),
    ({"prompt": "a cat <lora:nosuch-lora:0.8>"}, "not_found", "prompt",
     "prompt: no LoRA named 'nosuch-lora' (a <lora:nosuch-lora> tag); see GET /api/v1/loras"),
    ({"prompt": "a cat <lyco:gone>"}, "not_found", "prompt",
     "prompt: no LoRA named 'gone' (a <lora:gone> tag); see GET /api/v1/loras"),
    ({"styles": ["ink", "nosuch-style"]}, "not_found", "styles.1",
     "styles.1: no style named 'nosuch-style'; see GET /api/v1/styles"),
]


@pytest.mark.parametrize(("body", "code", "field", "message"), UNKNOWN, ids=[u[2] for u in UNKNOWN])
async def test_an_unknown_name_is_a_404_and_no_job(
    names_api: httpx.AsyncClient, body: dict[str, Any], code: str, field: str, message: str
) -> None:
    assert not names_settings_strict(names_api)
    r = await names_api.post("/api/v1/jobs", json={"prompt": "a cat", "steps": 2, **body},
                             headers={"Idempotency-Key": f"k-{field}"})
    assert r.status_code == 404, r.text
    assert r.json() == {"error": {"code": code, "message": message, "field": field}}
    assert await job_count(names_api) == 0
    queue = (await names_api.get("/api/v1/queue")).json()
    assert (queue["depth"], queue["running"]) == (0, [])


def names_settings_strict(api: httpx.AsyncClient) -> bool:
    """The native API is strict whatever ``strict_models`` says (it is off in these tests)."""
    return bool(api.app.state.services.settings.strict_models)  # type: ignore[attr-defined]


async def test_known_names_run_and_styles_are_merged(names_api: httpx.AsyncClient) -> None:
    body = {"prompt": "a cat <lora:detail:0.5>", "negative_prompt": "dark", "model": "alpha",
            "vae": "clear.safetensors", "loras": [{"name": "DETAIL"}], "styles": ["ink"], "steps": 2,
            "width": 64, "height": 64}
    r = await names_api.post("/api/v1/jobs", json=body)
    assert r.status_code == 202, r.text
    request = r.json()["request"]
    assert request["prompt"] == "a cat <lora:detail:0.5> in ink"
    assert request["negative_prompt"] == "dark, blurry"
    assert (request["model"], request["styles"], request["vae"]) == ("alpha", ["ink"], "clear.safetensors")
    assert (await wait_state(names_api, r.json()["id"]))["state"] == "succeeded"


@pytest.mark.parametrize("vae", ["Automatic", "None", "", "clear"])
async def test_vae_values_that_name_no_file_or_a_stem_are_accepted(
    names_api: httpx.AsyncClient, vae: str
) -> None:
    r = await names_api.post("/api/v1/jobs", json={"prompt": "x", "vae": vae, "width": 64, "height": 64})
    assert r.status_code == 202, r.text


async def test_the_listings_the_messages_point_to(names_api: httpx.AsyncClient) -> None:
    assert (await names_api.get("/api/v1/loras")).json() == [{"name": "detail", "alias": "detail"}]
    assert (await names_api.get("/api/v1/vaes")).json() == [{"name": "clear.safetensors"}]
    assert (await names_api.get("/api/v1/styles")).json() == [
        {"name": "ink", "prompt": "{prompt} in ink", "negative_prompt": "blurry"}
    ]
    assert "alpha" in {m["name"] for m in (await names_api.get("/api/v1/models")).json()}
