"""A1111's rule for a LoRA the prompt names that the server does not have: the job runs and the
response's ``info`` names it (A1111 1.10 shows it as a warning, not in the infotext). An unknown
checkpoint, though, is an error, not a swap."""

from __future__ import annotations

import json
from pathlib import Path

from tests.server.real_engine import real_engine_client

SMALL = {"width": 64, "height": 64, "steps": 1, "seed": 3}


async def test_missing_lora_runs_and_info_names_it(tiny_models_dir: Path, tmp_path: Path) -> None:
    models = tmp_path / "models"
    (models / "Stable-diffusion").mkdir(parents=True)
    (models / "Stable-diffusion" / "tiny-sd15.safetensors").symlink_to(
        tiny_models_dir / "Stable-diffusion" / "tiny-sd15.safetensors"
    )
    async with real_engine_client(models, tmp_path / "data") as client:
        prompt = "a cat <lora:gone:0.7> <lora:gone:1>"
        r = await client.post("/sdapi/v1/txt2img", json={**SMALL, "prompt": prompt})
        assert r.status_code == 200, r.text
        info = json.loads(r.json()["info"])
        assert info["extra_generation_params"]["Notes"] == "Networks not found: gone"
        assert "gone" not in info["infotexts"][0].split("\n")[-1]  # the infotext's parameters line

        r = await client.post("/sdapi/v1/txt2img", json={
            **SMALL, "prompt": "a cat", "override_settings": {"sd_model_checkpoint": "nosuch-model"}
        })
        assert r.status_code == 404 and "nosuch-model" in r.text
