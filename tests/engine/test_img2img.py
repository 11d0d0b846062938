"""img2img and inpainting through the real pipelines on tiny models (both families, both UNet kinds)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sdgate.core.engine import EngineInputs, EngineOutput, NoControl, StepAction, StepReport
from sdgate.core.errors import InvalidRequest
from sdgate.core.infotext import parse_infotext
from sdgate.core.models import ModelCatalog
from sdgate.core.requests import GenerationRequest, Mode
from sdgate.engine import inpaint as ip
from sdgate.engine.diffusers_engine import DiffusersEngine
from sdgate.settings import Settings


@pytest.fixture(scope="module")
def engine(tiny_models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DiffusersEngine]:
    """The tiny models plus a tiny SD 1.5 *inpainting* checkpoint (a 9-channel UNet)."""
    import torch
    from diffusers import UNet2DConditionModel

    from tests import tinymodels as tm

    root = tmp_path_factory.mktemp("inpaint-models")
    sd = root / "Stable-diffusion"
    for name in ("tiny-sd15.safetensors", "tiny-sdxl.safetensors"):
        (sd / name).parent.mkdir(parents=True, exist_ok=True)
        (sd / name).symlink_to(tiny_models_dir / "Stable-diffusion" / name)
    pipe = tm.tiny_sd(0)
    torch.manual_seed(3)
    pipe.unet = UNet2DConditionModel.from_config({**pipe.unet.config, "in_channels": 9})
    tm.save_single_file(pipe, "sd1", sd / "tiny-sd15-inpainting.safetensors")
    settings = Settings(data_dir=tmp_path_factory.mktemp("data"), models_dir=root, device="cpu")
    yield DiffusersEngine(settings, ModelCatalog(settings, builtin_dir=None))


def _noise_image(width: int, height: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8), "RGB")


def _box_mask(width: int, height: int, box: tuple[int, int, int, int]) -> Image.Image:
    mask = Image.new("L", (width, height), 0)
    mask.paste(255, box)
    return mask


def run(
    engine: DiffusersEngine,
    init: Image.Image | tuple[Image.Image, ...],
    mask: Image.Image | None = None,
    control: object = None,
    **fields: object,
) -> EngineOutput:
    values: dict[str, object] = {
        "mode": Mode.INPAINT if mask is not None else Mode.IMG2IMG,
        "prompt": "a red circle",
        "model": "tiny-sd15",
        "width": 64,
        "height": 64,
        "steps": 4,
        "seed": 7,
        "init_images": ("x",),
    }
    values.update(fields)
    inits = init if isinstance(init, tuple) else (init,)
    return engine.generate(
        GenerationRequest(**values),  # type: ignore[arg-type]
        EngineInputs(inits, mask),
        control or NoControl(),  # type: ignore[arg-type]
    )


def _close(a: Image.Image, b: Image.Image) -> bool:
    """Equal but for batched float rounding (a batch of 2 vs 1 in the UNet)."""
    return int(np.abs(np.asarray(a, dtype=int) - np.asarray(b, dtype=int)).max()) <= 3


MODELS = ["tiny-sd15", "tiny-sdxl", "tiny-sd15-inpainting"]


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("resize_mode", [0, 1, 2, 3])
def test_output_size_per_resize_mode(engine: DiffusersEngine, model: str, resize_mode: int) -> None:
    out = run(engine, _noise_image(40, 72), model=model, resize_mode=resize_mode, width=64, height=48)
    assert [img.image.size for img in out.images] == [(64, 48)]
    params = parse_infotext(out.images[0].infotext)
    assert params["Denoising strength"] == "0.75" and params["Steps"] == "4"


def test_resize_modes_fill_as_a1111() -> None:
    tall = Image.new("RGB", (20, 40), (255, 0, 0))
    assert ip.resize_image(tall, 40, 40, 0).getpixel((0, 20)) == (255, 0, 0)
    cropped = ip.resize_image(tall, 40, 40, 1)  # crop: the red fills everything
    assert cropped.getpixel((0, 0)) == (255, 0, 0)
    padded = Image.new("RGB", (20, 40), (0, 0, 255))
    padded.paste((255, 0, 0), (0, 0, 20, 40))
    filled = ip.resize_image(tall, 40, 40, 2)  # fill: the sides stretch the image's edges
    assert filled.size == (40, 40) and filled.getpixel((1, 20)) == (255, 0, 0)


def test_same_seed_same_pixels_and_batches_follow_seeds(engine: DiffusersEngine) -> None:
    init = _noise_image(64, 64)
    a = run(engine, init, batch_size=2, seed=11)
    b = run(engine, init, seed=12)
    assert [img.seed for img in a.images] == [11, 12]
    assert _close(a.images[1].image, b.images[0].image)  # image i is seed + i alone
    c = run(engine, init, batch_size=2, seed=11)
    assert np.array_equal(np.asarray(a.images[0].image), np.asarray(c.images[0].image))


def test_denoising_strength_sets_the_steps_run(engine: DiffusersEngine) -> None:
    class Count:
        def __init__(self) -> None:
            self.reports: list[StepReport] = []

        def on_step(self, report: StepReport) -> StepAction:
            self.reports.append(report)
            return StepAction.CONTINUE

    control = Count()
    run(engine, _noise_image(64, 64), control=control, steps=8, denoising_strength=0.5)
    assert [(r.step, r.steps) for r in control.reports] == [(1, 4), (2, 4), (3, 4), (4, 4)]
    low = run(engine, _noise_image(64, 64), steps=8, denoising_strength=0.0)  # still one step
    assert low.images


@pytest.mark.parametrize("model", MODELS)
def test_unmasked_pixels_are_kept(engine: DiffusersEngine, model: str) -> None:
    init = _noise_image(64, 64, seed=2)
    mask = _box_mask(64, 64, (16, 16, 48, 40))
    out = run(engine, init, mask, model=model, mask_blur_x=0, mask_blur_y=0, denoising_strength=1.0)
    got, src = np.asarray(out.images[0].image, dtype=int), np.asarray(init, dtype=int)
    keep = np.asarray(mask) == 0
    assert np.abs(got - src)[keep].max() <= 2
    assert np.abs(got - src)[~keep].mean() > 10  # and the masked area was repainted


def test_mask_invert_and_other_sizes(engine: DiffusersEngine) -> None:
    init = _noise_image(64, 64, seed=3)
    mask = _box_mask(32, 32, (8, 8, 24, 24))  # half size: resized to the image, as A1111 does
    out = run(engine, init, mask, mask_blur_x=0, mask_blur_y=0, inpainting_mask_invert=True)
    got, src = np.asarray(out.images[0].image, dtype=int), np.asarray(init, dtype=int)
    assert np.abs(got - src)[24:40, 24:40].max() <= 2  # the box is now the kept part
    assert np.abs(got - src)[:8].mean() > 10


@pytest.mark.parametrize("fill", [0, 1, 2, 3])
def test_inpainting_fill_modes(engine: DiffusersEngine, fill: int) -> None:
    init = _noise_image(64, 64, seed=4)
    out = run(
        engine,
        init,
        _box_mask(64, 64, (0, 0, 32, 64)),
        inpainting_fill=fill,
        mask_blur_x=0,
        mask_blur_y=0,
        initial_noise_multiplier=0.9,
    )
    got = np.asarray(out.images[0].image, dtype=int)
    assert np.abs(got - np.asarray(init, dtype=int))[:, 40:].max() <= 2
    assert parse_infotext(out.images[0].infotext)["Noise multiplier"] == "0.9"


@pytest.mark.parametrize("model", ["tiny-sd15", "tiny-sd15-inpainting"])
def test_only_masked_crops_and_pastes_back(engine: DiffusersEngine, model: str) -> None:
    init = _noise_image(160, 120, seed=5)
    mask = _box_mask(160, 120, (100, 70, 120, 90))
    out = run(
        engine,
        init,
        mask,
        model=model,
        inpaint_full_res=True,
        inpaint_full_res_padding=8,
        mask_blur_x=0,
        mask_blur_y=0,
        denoising_strength=1.0,
    )
    image = out.images[0].image
    assert image.size == (160, 120)  # the original's size, not the processing size
    got, src = np.asarray(image, dtype=int), np.asarray(init, dtype=int)
    keep = np.asarray(mask) == 0
    assert np.abs(got - src)[keep].max() <= 2
    assert np.abs(got - src)[70:90, 100:120].mean() > 10
    assert parse_infotext(out.images[0].infotext)["Inpaint area"] == "Only masked"


def test_crop_region_keeps_the_processing_aspect() -> None:
    box = ip.expand_crop_region(ip.crop_region(_box_mask(160, 120, (100, 70, 120, 90)), 8), 64, 32, 160, 120)
    x1, y1, x2, y2 = box
    assert (x2 - x1) == 2 * (y2 - y1) and x1 >= 0 and x2 <= 160 and y1 <= 62 and y2 >= 98


def test_init_images_cycle_over_the_batch(engine: DiffusersEngine) -> None:
    black, white = Image.new("RGB", (64, 64)), Image.new("RGB", (64, 64), (255, 255, 255))
    out = run(engine, (black, white), batch_size=2, seed=20)
    alone = run(engine, white, seed=21)
    assert _close(out.images[1].image, alone.images[0].image)
    assert not _close(out.images[0].image, alone.images[0].image)


def test_requests_missing_inputs_name_the_field(engine: DiffusersEngine) -> None:
    with pytest.raises(InvalidRequest) as err:
        run(engine, ())
    assert err.value.field == "init_images"
    for field, value in (("resize_mode", 5), ("inpainting_fill", 9), ("denoising_strength", 1.5)):
        with pytest.raises(InvalidRequest) as err:
            run(engine, _noise_image(64, 64), **{field: value})
        assert err.value.field == field


def _blurred_case(engine: DiffusersEngine, **fields: object) -> np.ndarray:
    init = _noise_image(64, 64, seed=8)
    out = run(engine, init, _box_mask(64, 64, (16, 16, 48, 48)), denoising_strength=1.0, **fields)
    return np.asarray(out.images[0].image, dtype=int)


def test_mask_round_default_rounds_and_off_keeps_the_blur_soft(engine: DiffusersEngine) -> None:
    rounded = _blurred_case(engine, mask_blur_x=6, mask_blur_y=6)
    assert np.array_equal(rounded, _blurred_case(engine, mask_blur_x=6, mask_blur_y=6, mask_round=True))
    soft = _blurred_case(engine, mask_blur_x=6, mask_blur_y=6, mask_round=False)
    band = np.zeros((64, 64), dtype=bool)
    band[8:56, 8:56], band[24:40, 24:40] = True, False  # around the box's edge, where the blur is grey
    assert np.abs(soft - rounded)[band].mean() > 1
    # A mask without grey levels rounds to itself: off changes nothing.
    sharp = _blurred_case(engine, mask_blur_x=0, mask_blur_y=0)
    assert np.array_equal(sharp, _blurred_case(engine, mask_blur_x=0, mask_blur_y=0, mask_round=False))


def test_soft_mask_is_for_one_call() -> None:
    from sdgate.engine.pipelines import SDInpaintPipeline, soft_mask
    from tests import tinymodels as tm

    pipe = SDInpaintPipeline(**tm.tiny_sd(0).components, requires_safety_checker=False)
    stock = pipe.mask_processor
    grey = Image.new("L", (16, 16), 100)
    with soft_mask(pipe):
        assert float(pipe.mask_processor.preprocess(grey, 16, 16).max()) == pytest.approx(100 / 255)
    assert pipe.mask_processor is stock and float(stock.preprocess(grey, 16, 16).max()) == 0.0
    with soft_mask(pipe, False):
        assert pipe.mask_processor is stock


def test_latent_fill_keeps_grey_levels_when_not_rounded() -> None:
    import torch

    from sdgate.engine.img2img import latent_fill

    mask = Image.new("L", (64, 64), 100)
    latents, noise = torch.zeros(1, 4, 8, 8), torch.ones(1, 4, 8, 8)
    assert float(latent_fill(ip.LATENT_NOISE, mask, 8)(latents, noise).max()) == 0.0
    soft = latent_fill(ip.LATENT_NOISE, mask, 8, rounded=False)(latents, noise)
    assert float(soft.mean()) == pytest.approx(100 / 255, abs=1e-3)
