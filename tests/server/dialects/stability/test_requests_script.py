"""Stability's documented v1 text-to-image Python example, run unchanged but for the host."""

from __future__ import annotations

import base64
import os
from pathlib import Path

import requests
from PIL import Image


def test_documented_text_to_image_script(live: str, tmp_path: Path) -> None:
    # -- the example, as published (api_host and the output folder are the only changes) --------
    engine_id = "stable-diffusion-v1-6"
    api_host = os.getenv("API_HOST", live)
    api_key = "sk-local"

    response = requests.post(
        f"{api_host}/v1/generation/{engine_id}/text-to-image",
        headers={
            "Content-Type": "application/json",
            "Accept": "application/json",
            "Authorization": f"Bearer {api_key}",
        },
        json={
            "text_prompts": [{"text": "A lighthouse on a cliff"}],
            "cfg_scale": 7,
            "height": 1024,
            "width": 1024,
            "samples": 1,
            "steps": 30,
        },
        timeout=60,
    )
    if response.status_code != 200:
        raise Exception("Non-200 response: " + str(response.text))

    data = response.json()
    for i, image in enumerate(data["artifacts"]):
        with open(tmp_path / f"v1_txt2img_{i}.png", "wb") as f:
            f.write(base64.b64decode(image["base64"]))
    # -- end of the example -------------------------------------------------------------------------

    written = sorted(tmp_path.glob("v1_txt2img_*.png"))
    assert len(written) == 1
    assert Image.open(written[0]).size == (1024, 1024)
