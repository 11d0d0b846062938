"""img2img and inpainting that mean something: the built-in demo model really draws shapes."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from sdgate.core.engine import EngineInputs, NoControl
from sdgate.core.models import ModelCatalog
from sdgate.core.requests import GenerationRequest, Mode
from sdgate.demo import analyser as an
from sdgate.engine.diffusers_engine import DiffusersEngine
from sdgate.settings import Settings

pytestmark = pytest.mark.slow
PROMPT = "a red circle on a blue background"


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[DiffusersEngine, Image.Image]:
    root = tmp_path_factory.mktemp("demo")
    settings = Settings(data_dir=root / "data", models_dir=root / "models", device="cpu")
    engine = DiffusersEngine(settings, ModelCatalog(settings))
    out = engine.generate(
        GenerationRequest(prompt=PROMPT, width=256, height=256, steps=20, cfg_scale=4, seed=3),
        EngineInputs(),
        NoControl(),
    )
    return engine, out.images[0].image


def _key(image: Image.Image) -> tuple[str, ...]:
    found = an.analyse(image)
    return (found.background, *(f"{r.color} {r.kind}" for r in found.regions[:1]))


def test_img2img_at_low_strength_keeps_the_scene(demo: tuple[DiffusersEngine, Image.Image]) -> None:
    engine, image = demo
    assert _key(image) == ("blue", "red circle")
    request = GenerationRequest(
        mode=Mode.IMG2IMG,
        prompt=PROMPT,
        width=256,
        height=256,
        steps=20,
        cfg_scale=4,
        seed=4,
        denoising_strength=0.3,
        init_images=("x",),
    )
    out = engine.generate(request, EngineInputs((image,)), NoControl())
    assert _key(out.images[0].image) == _key(image)


def test_inpainting_recolours_the_masked_shape_only(demo: tuple[DiffusersEngine, Image.Image]) -> None:
    engine, image = demo
    region = an.analyse(image).regions[0]
    x0, y0, x1, y1 = (
        int(round(v * 256))
        for v in (region.box[0] - 0.04, region.box[1] - 0.04, region.box[2] + 0.04, region.box[3] + 0.04)
    )
    mask = Image.new("L", (256, 256), 0)
    mask.paste(255, (max(x0, 0), max(y0, 0), x1, y1))
    request = GenerationRequest(
        mode=Mode.INPAINT,
        prompt="a green circle on a blue background",
        width=256,
        height=256,
        steps=20,
        cfg_scale=4,
        seed=5,
        denoising_strength=1.0,
        mask_blur_x=0,
        mask_blur_y=0,
        init_images=("x",),
        mask="m",
    )
    out = engine.generate(request, EngineInputs((image,), mask), NoControl()).images[0].image
    assert an.analyse(out).regions[0].color == "green"
    keep = np.asarray(mask) == 0
    diff = np.abs(np.asarray(out, dtype=int) - np.asarray(image, dtype=int))
    assert diff[keep].max() <= 2  # composited back from the original, as A1111 does
