"""A1111 scripts on the real engine (tiny models, CPU): an X/Y/Z cell is the image a plain request
for the same settings makes."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from tests.server.real_engine import real_engine_client

BASE = {"override_settings": {"sd_model_checkpoint": "tiny-sd15"}, "width": 64, "height": 64, "steps": 2,
        "prompt": "a red circle", "sampler_name": "Euler"}  # fmt: skip


@pytest.fixture
async def client(tiny_models_dir: Path, tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    async with real_engine_client(tiny_models_dir, tmp_path / "data") as c:
        yield c


async def test_xyz_cells_match_plain_requests(client: httpx.AsyncClient) -> None:
    # X: Seed 11, 12 (index 1); Y: Steps 1, 2 (index 4); include the lone images
    args = [1, "11, 12", [], 4, "1, 2", [], 0, "", [], True, True, False, False, False, False, False, 0]
    payload = {**BASE, "script_name": "x/y/z plot", "script_args": [*args, False]}
    r = await client.post("/sdapi/v1/txt2img", json=payload)
    assert r.status_code == 200, r.text
    body = r.json()
    assert len(body["images"]) == 1 + 4
    info = json.loads(body["info"])
    assert info["all_seeds"] == [11, 12, 11, 12]
    cells = [base64.b64decode(b) for b in body["images"][1:]]
    assert len(set(cells)) == 4
    plain = await client.post("/sdapi/v1/txt2img", json={**BASE, "seed": 12, "steps": 1})
    assert plain.status_code == 200, plain.text
    assert base64.b64decode(plain.json()["images"][0]) == cells[1]
