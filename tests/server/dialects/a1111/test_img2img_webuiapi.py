"""``webuiapi``'s img2img and inpainting calls against a live ``sdgate serve`` on the tiny models."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.harness import ProcessServer

pytestmark = pytest.mark.slow


@pytest.fixture
def live(tmp_path: Path, tiny_models_dir: Path) -> Iterator[ProcessServer]:
    args = ["--models-dir", str(tiny_models_dir), "--device", "cpu"]
    server = ProcessServer.sdgate(args, tmp_path / "data")
    yield server
    server.stop()


def test_webuiapi_img2img_and_inpainting(live: ProcessServer) -> None:
    import webuiapi

    api = webuiapi.WebUIApi(host="127.0.0.1", port=live.port, sampler="Euler a", steps=4)
    rng = np.random.default_rng(0)
    init = Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8), "RGB")
    result = api.img2img(
        images=[init],
        prompt="a red circle",
        width=64,
        height=64,
        seed=3,
        batch_size=2,
        denoising_strength=0.6,
    )
    assert [img.size for img in result.images] == [(64, 64)] * 2
    assert result.info["all_seeds"] == [3, 4]
    assert "Denoising strength: 0.6" in result.info["infotexts"][0]

    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))
    result = api.img2img(
        images=[init],
        mask_image=mask,
        prompt="a red circle",
        width=64,
        height=64,
        seed=3,
        mask_blur=0,
        inpainting_fill=1,
        inpaint_full_res=False,
        denoising_strength=1.0,
    )
    got = np.asarray(result.image.convert("RGB"), dtype=int)
    keep = np.asarray(mask) == 0
    assert np.abs(got - np.asarray(init, dtype=int))[keep].max() <= 2
