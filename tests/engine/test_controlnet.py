"""ControlNet on the engine (issue 19): tiny random-weight ControlNets built from the tiny SD 1.5 and
SDXL UNets (``ControlNetModel.from_unet``, zero convs randomised so they have an effect), saved as
diffusers folders, as single files in A1111's ``control_model.*`` layout and as single files in
diffusers' key layout, in a ``ControlNet/`` folder beside the tiny checkpoints."""

from __future__ import annotations

import types
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from sdgate.core.engine import EngineInputs, EngineOutput, NoControl
from sdgate.core.errors import InvalidRequest, ModelNotFound
from sdgate.core.infotext import parse_infotext
from sdgate.core.models import ModelCatalog
from sdgate.core.requests import (
    ControlMode,
    ControlNetUnit,
    ControlResize,
    GenerationRequest,
    HiresSettings,
    Mode,
)
from sdgate.engine import controlnet_units
from sdgate.engine.controlnet import ControlHint, StepProgress, control_tensor, controlled
from sdgate.engine.diffusers_engine import DiffusersEngine
from sdgate.settings import Settings

SIZE = 64
EMBEDDING = (8, 16, 16, 32)  # a small hint embedding that still downsamples by 8, as SD's does


def _ldm(net: Any) -> dict[str, Any]:
    """A ControlNet's state dict in A1111's ``control_model.*`` layout (the inverse of the loader's)."""
    from tests import tinymodels as tm

    sd, cfg = net.state_dict(), net.config
    body = {k: v for k, v in sd.items() if not k.startswith("controlnet_")}
    ups = ["CrossAttnUpBlock2D" if "CrossAttn" in t else "UpBlock2D" for t in reversed(cfg.down_block_types)]
    shape = types.SimpleNamespace(
        block_out_channels=cfg.block_out_channels, layers_per_block=cfg.layers_per_block, up_block_types=ups
    )
    out = {
        "control_model." + k.removeprefix("model.diffusion_model."): v
        for k, v in tm.unet_to_ldm(body, shape).items()
    }
    for key, value in sd.items():
        if key.startswith("controlnet_down_blocks."):
            index, part = key.split(".")[1:]
            out[f"control_model.zero_convs.{index}.0.{part}"] = value
        elif key.startswith("controlnet_mid_block."):
            out[f"control_model.middle_block_out.0.{key.split('.')[-1]}"] = value
    blocks = len(net.controlnet_cond_embedding.blocks)
    names = [
        ("conv_in", 0),
        *((f"blocks.{j}", 2 * (j + 1)) for j in range(blocks)),
        ("conv_out", 2 * blocks + 2),
    ]
    for name, index in names:
        for part in ("weight", "bias"):
            out[f"control_model.input_hint_block.{index}.{part}"] = sd[
                f"controlnet_cond_embedding.{name}.{part}"
            ]
    return {k: v.detach().contiguous().clone() for k, v in out.items()}


def _tiny_controlnet(unet: Any, seed: int) -> Any:
    import torch
    from diffusers import ControlNetModel

    torch.manual_seed(seed)
    net = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=EMBEDDING)
    with torch.no_grad():  # from_unet zeroes the output convs: give them weights that do something
        for name, param in net.named_parameters():
            if name.startswith(
                ("controlnet_down_blocks", "controlnet_mid_block", "controlnet_cond_embedding")
            ):
                param.normal_(0.0, 0.3)
    return net


@pytest.fixture(scope="module")
def engine(tiny_models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DiffusersEngine]:
    import torch
    from diffusers import UNet2DConditionModel
    from safetensors.torch import save_file

    from tests import tinymodels as tm

    root = tmp_path_factory.mktemp("controlnet-models")
    checkpoints = root / "Stable-diffusion"
    checkpoints.mkdir()
    for name in ("tiny-sd15.safetensors", "tiny-sdxl.safetensors"):
        (checkpoints / name).symlink_to(tiny_models_dir / "Stable-diffusion" / name)
    folder = root / "ControlNet"
    for family, pipe in (("sd15", tm.tiny_sd(0)), ("sdxl", tm.tiny_sdxl(0))):
        net = _tiny_controlnet(pipe.unet, seed=11)
        net.save_pretrained(str(folder / f"tiny-cn-{family}"))
        save_file(_ldm(net), str(folder / f"control_tiny_{family}.safetensors"))
        tensors = {k: v.detach().contiguous() for k, v in net.state_dict().items()}
        (folder / "diffusers-keys").mkdir(exist_ok=True)
        save_file(tensors, str(folder / "diffusers-keys" / f"tiny-cn-{family}-hf.safetensors"))
    inpainting = tm.tiny_sd(0)  # an inpainting checkpoint: a 9-channel UNet (latents, mask, masked image)
    inpainting.unet = UNet2DConditionModel.from_config({**inpainting.unet.config, "in_channels": 9})
    tm.save_single_file(inpainting, "sd1", checkpoints / "tiny-sd15-inpainting.safetensors")
    (folder / "broken.safetensors").write_bytes(b"not a safetensors file")
    torch.save(
        {"weights": types.SimpleNamespace(code="print")}, folder / "pickled-code.pth"
    )  # more than tensors
    second = _tiny_controlnet(tm.tiny_sd(0).unet, seed=12)
    second.save_pretrained(str(root / "controlnet" / "tiny-cn-sd15-b"))  # ComfyUI's folder name
    settings = Settings(data_dir=tmp_path_factory.mktemp("data"), models_dir=root, device="cpu")
    yield DiffusersEngine(settings, ModelCatalog(settings, builtin_dir=None))


def _picture(seed: int = 0) -> Image.Image:
    """A control map: a few white shapes on black (what an edge or scribble map looks like)."""
    rng = np.random.default_rng(seed)
    array = np.zeros((SIZE, SIZE, 3), dtype=np.uint8)
    for _ in range(4):
        x, y = rng.integers(0, SIZE - 16, 2)
        array[y : y + 12, x : x + 12] = 255
    return Image.fromarray(array, "RGB")


def _unit(model: str = "tiny-cn-sd15", **fields: Any) -> ControlNetUnit:
    return ControlNetUnit(model=model, image="control", **fields)


def _run(
    engine: DiffusersEngine,
    units: tuple[ControlNetUnit, ...] = (),
    *,
    images: tuple[Image.Image, ...] | None = None,
    masks: tuple[Image.Image, ...] = (),
    init: Image.Image | None = None,
    mask: Image.Image | None = None,
    **fields: Any,
) -> EngineOutput:
    values: dict[str, Any] = {
        "prompt": "a red circle",
        "model": "tiny-sd15",
        "width": SIZE,
        "height": SIZE,
        "steps": 4,
        "seed": 5,
        "controlnets": units,
    }
    if init is not None:
        values.update(mode=Mode.INPAINT if mask is not None else Mode.IMG2IMG, init_images=("init",))
    values.update(fields)
    wanted = sum(1 for u in units if u.image is not None)
    controls = images if images is not None else tuple(_picture(i) for i in range(wanted))
    inputs = EngineInputs(
        init_images=(init,) if init is not None else (),
        mask=mask,
        control_images=controls,
        control_masks=masks,
    )
    return engine.generate(GenerationRequest(**values), inputs, NoControl())


def _pixels(out: EngineOutput) -> np.ndarray:
    return np.asarray(out.images[0].image, dtype=np.int16)


def _differ(a: EngineOutput, b: EngineOutput) -> bool:
    return int(np.abs(_pixels(a) - _pixels(b)).max()) > 2


def _same(a: EngineOutput, b: EngineOutput, tolerance: int = 0) -> bool:
    return int(np.abs(_pixels(a) - _pixels(b)).max()) <= tolerance


@pytest.fixture(scope="module")
def plain(engine: DiffusersEngine) -> EngineOutput:
    return _run(engine)


# --- loading --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "model, controlnet",
    [
        ("tiny-sd15", "tiny-cn-sd15"),  # a diffusers folder
        ("tiny-sd15", "control_tiny_sd15"),  # A1111's single-file layout
        ("tiny-sd15", "tiny-cn-sd15-hf.safetensors"),  # a single file in diffusers' keys
        ("tiny-sd15", "tiny-cn-sd15-b"),  # from ComfyUI's controlnet/ folder
        ("tiny-sdxl", "tiny-cn-sdxl"),
        ("tiny-sdxl", "control_tiny_sdxl [0123abcd]"),  # A1111 sends names with their hash
        ("tiny-sdxl", "diffusers-keys/tiny-cn-sdxl-hf.safetensors"),
    ],
)
def test_every_format_and_family_loads_and_guides(
    engine: DiffusersEngine, model: str, controlnet: str
) -> None:
    plain = _run(engine, model=model)
    guided = _run(engine, (_unit(controlnet),), model=model)
    assert _differ(guided, plain)


def test_the_formats_hold_the_same_network(engine: DiffusersEngine) -> None:
    """The single files are the folder's weights: their images equal the folder's."""
    folder = _run(engine, (_unit("tiny-cn-sd15"),))
    assert _same(_run(engine, (_unit("control_tiny_sd15"),)), folder, tolerance=1)
    assert _same(_run(engine, (_unit("tiny-cn-sd15-hf"),)), folder, tolerance=1)


def test_a_controlnet_of_another_family_is_refused_naming_its_field(engine: DiffusersEngine) -> None:
    ok = _unit("tiny-cn-sd15")
    with pytest.raises(InvalidRequest) as caught:
        _run(engine, (ok, _unit("control_tiny_sdxl")))
    assert caught.value.field == "controlnets[1].model"
    assert "SDXL" in caught.value.message and "SD 1.x" in caught.value.message


def test_a_missing_controlnet_is_a_404_naming_it(engine: DiffusersEngine) -> None:
    with pytest.raises(ModelNotFound) as caught:
        _run(engine, (_unit("no-such-controlnet"),))
    assert caught.value.status_code == 404
    assert caught.value.field == "controlnets[0].model"
    assert "no-such-controlnet" in caught.value.message


@pytest.mark.parametrize("name", ["broken", "pickled-code"])
def test_a_file_that_does_not_load_is_refused_naming_the_unit(engine: DiffusersEngine, name: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        _run(engine, (_unit(name),))
    assert caught.value.field == "controlnets[0].model"
    assert "cannot be loaded" in caught.value.message


def test_a_unit_without_an_image_needs_an_init_image(engine: DiffusersEngine) -> None:
    with pytest.raises(InvalidRequest) as caught:
        _run(engine, (ControlNetUnit(model="tiny-cn-sd15"),))
    assert caught.value.field == "controlnets[0].image"


def test_an_unknown_module_is_refused_naming_the_unit(engine: DiffusersEngine) -> None:
    with pytest.raises(InvalidRequest) as caught:
        _run(engine, (_unit(module="no-such-preprocessor"),))
    assert caught.value.field == "controlnets[0].module"


# --- what a unit does ------------------------------------------------------------------------------


def test_weight_zero_equals_no_controlnet(engine: DiffusersEngine, plain: EngineOutput) -> None:
    assert _same(_run(engine, (_unit(weight=0.0),)), plain)
    assert _differ(_run(engine, (_unit(weight=1.0),)), plain)


def test_a_black_unit_mask_equals_no_controlnet(engine: DiffusersEngine, plain: EngineOutput) -> None:
    black = Image.new("L", (SIZE, SIZE), 0)
    masked = _run(engine, (_unit(mask="m"),), masks=(black,))
    assert _same(masked, plain)
    white = Image.new("L", (SIZE, SIZE), 255)
    assert _same(_run(engine, (_unit(mask="m"),), masks=(white,)), _run(engine, (_unit(),)))


@pytest.fixture
def guided_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many UNet calls of each pass the hook gave residuals (one entry per pass)."""
    counts: list[int] = []
    real = controlnet_units.controlled

    @contextmanager
    def counting(*args: Any, **kwargs: Any) -> Iterator[Any]:
        with real(*args, **kwargs) as hook:
            yield hook
        counts.append(hook.calls)

    monkeypatch.setattr(controlnet_units, "controlled", counting)
    return counts


def test_guidance_window(engine: DiffusersEngine, plain: EngineOutput, guided_calls: list[int]) -> None:
    """Steps 0..3 of 4 are at 0, 0.25, 0.5, 0.75 of the pass: a unit guides those in its window."""
    full = _run(engine, (_unit(),))
    late = _run(engine, (_unit(guidance_start=0.5, guidance_end=1.0),))
    early = _run(engine, (_unit(guidance_start=0.0, guidance_end=0.3),))
    assert guided_calls == [4, 2, 2]
    assert _differ(late, full) and _differ(late, plain)
    assert _differ(early, full) and _differ(early, late) and _differ(early, plain)
    _run(engine, (_unit(guidance_start=0.5),), init=_picture(7), denoising_strength=0.5)  # img2img: 2 steps
    assert guided_calls[-1] == 1  # the pass's own steps count: its second half is its last step


def test_control_modes_differ(engine: DiffusersEngine) -> None:
    outs = {mode: _run(engine, (_unit(control_mode=mode),)) for mode in ControlMode}
    modes = list(outs)
    for i, a in enumerate(modes):
        for b in modes[i + 1 :]:
            assert _differ(outs[a], outs[b]), (a, b)


def test_multi_controlnet_sums_the_residuals(engine: DiffusersEngine, plain: EngineOutput) -> None:
    one = _run(engine, (_unit(),))
    other = _run(engine, (_unit("tiny-cn-sd15-b"),))
    both = _run(engine, (_unit(), _unit("tiny-cn-sd15-b")))
    assert _differ(both, one) and _differ(both, other)
    # Two halves of the same unit sum to the whole.
    image = _picture(0)
    halves = _run(engine, (_unit(weight=0.5), _unit(weight=0.5)), images=(image, image))
    assert _same(halves, one, tolerance=1)


def test_sdxl_modes_and_weight_zero(engine: DiffusersEngine) -> None:
    plain = _run(engine, model="tiny-sdxl")
    assert _same(_run(engine, (_unit("tiny-cn-sdxl", weight=0.0),), model="tiny-sdxl"), plain)
    balanced = _run(engine, (_unit("tiny-cn-sdxl"),), model="tiny-sdxl")
    cond_only = _run(engine, (_unit("tiny-cn-sdxl", control_mode=ControlMode.CONTROLNET),), model="tiny-sdxl")
    assert _differ(balanced, plain) and _differ(cond_only, balanced)


def test_img2img_and_inpaint(engine: DiffusersEngine) -> None:
    init = Image.fromarray(np.random.default_rng(3).integers(0, 255, (SIZE, SIZE, 3), dtype=np.uint8), "RGB")
    box = Image.new("L", (SIZE, SIZE), 0)
    box.paste(255, (8, 8, 56, 56))
    for mask in (None, box):
        plain = _run(engine, init=init, mask=mask, denoising_strength=1.0)
        guided = _run(engine, (_unit(),), init=init, mask=mask, denoising_strength=1.0)
        assert _differ(guided, plain)
        assert _same(_run(engine, (_unit(weight=0.0),), init=init, mask=mask, denoising_strength=1.0), plain)
    # An inpainting UNet: the ControlNet sees the latents part of its input.
    plain = _run(engine, init=init, mask=box, model="tiny-sd15-inpainting")
    assert _differ(_run(engine, (_unit(),), init=init, mask=box, model="tiny-sd15-inpainting"), plain)
    # A unit with no image of its own uses the init image.
    own = _run(engine, (_unit(),), images=(init,), init=init)
    borrowed = _run(engine, (ControlNetUnit(model="tiny-cn-sd15"),), init=init)
    assert _same(own, borrowed)


def test_hires_fix_guides_both_passes(engine: DiffusersEngine, guided_calls: list[int]) -> None:
    hr = HiresSettings(scale=1.5, denoising_strength=0.5, second_pass_steps=4)
    plain = _run(engine, hires=hr)
    guided = _run(engine, (_unit(),), hires=hr)
    assert guided.images[0].image.size == (96, 96)
    assert guided_calls == [4, 2]  # the second pass runs 2 of its 4 steps at strength 0.5
    assert _differ(guided, plain)
    assert _same(_run(engine, (_unit(weight=0.0),), hires=hr), plain)


def test_infotext_names_each_unit(engine: DiffusersEngine) -> None:
    units = (_unit(weight=0.5, guidance_end=0.8), _unit("control_tiny_sd15", control_mode=ControlMode.PROMPT))
    info = parse_infotext(_run(engine, units).images[0].infotext)
    first = str(info["ControlNet 0"])
    assert first.startswith("Module: none, Model: tiny-cn-sd15, Weight: 0.5, Resize Mode: Crop and Resize")
    assert "Guidance End: 0.8" in first and "Control Mode: Balanced" in first
    second = str(info["ControlNet 1"])
    assert "Model: control_tiny_sd15 [" in second and "Control Mode: My prompt is more important" in second


# --- fitting the control image -----------------------------------------------------------------------


@pytest.mark.parametrize("mode", list(ControlResize))
def test_resize_modes_give_the_pass_size(mode: ControlResize) -> None:
    wide = Image.new("RGB", (120, 40), (255, 255, 255))
    loaded = controlnet_units.LoadedUnit(
        ControlNetUnit(model="x", image="i", resize_mode=mode), net=None, name="x", image=wide, mask=wide
    )
    hint = controlnet_units.JobControls([loaded]).hints(48, 64)[0]
    assert tuple(hint.image.shape) == (1, 3, 64, 48)
    assert hint.mask is not None and tuple(hint.mask.shape) == (1, 1, 64, 48)


def test_resize_modes_place_the_image_differently() -> None:
    marked = Image.new("RGB", (120, 40), (0, 0, 0))
    marked.paste((255, 255, 255), (0, 0, 20, 40))  # a white band at the left edge
    images = {}
    for mode in ControlResize:
        loaded = controlnet_units.LoadedUnit(
            ControlNetUnit(model="x", image="i", resize_mode=mode),
            net=None,
            name="x",
            image=marked,
            mask=None,
        )
        images[mode] = controlnet_units.JobControls([loaded]).hints(64, 64)[0].image
    assert float(images[ControlResize.CROP_AND_RESIZE][..., :8].mean()) < 0.1  # cropped away
    assert float(images[ControlResize.JUST_RESIZE][..., :8].mean()) > 0.9  # stretched
    fill = images[ControlResize.RESIZE_AND_FILL]
    assert float(fill[..., 24:40, :8].mean()) > 0.9 and float(fill[..., :8, :].mean()) < 0.1  # letterboxed


# --- the hook on its own (the API the ComfyUI executor uses) ------------------------------------------


def test_controlled_hook_modes_on_the_cfg_halves() -> None:
    import torch

    from tests import tinymodels as tm

    unet = tm.tiny_sd(0).unet.eval()
    net = _tiny_controlnet(unet, seed=11).eval()
    image = control_tensor(_picture(0))
    latents = torch.randn(1, 4, 8, 8).repeat(2, 1, 1, 1)
    text = torch.randn(1, 77, unet.config.cross_attention_dim).repeat(2, 1, 1)
    t = torch.tensor(500)

    def call(hints: list[ControlHint], progress: Any = None, guided: int = 1) -> torch.Tensor:
        with torch.no_grad(), controlled(unet, hints, progress or StepProgress(4), batch=1) as hook:
            out = unet(latents, t, encoder_hidden_states=text).sample
        assert hook.calls == (guided if hints else 0)
        return out

    plain = call([])
    balanced = call([ControlHint(net, image)])
    cond_only = call([ControlHint(net, image, mode=ControlMode.CONTROLNET)])
    assert torch.equal(cond_only[0], plain[0])  # the uncond half untouched
    assert torch.allclose(cond_only[1], balanced[1], atol=1e-5)  # the cond half as balanced
    assert not torch.allclose(balanced[0], plain[0])
    progress = StepProgress(4)
    progress.step = 1  # 0.25: outside a [0.5, 1] window
    assert torch.equal(call([ControlHint(net, image, start=0.5)], progress, guided=0), plain)


@pytest.mark.parametrize("sampler", ["Euler a", "DPM++ 2M", "Heun", "DDIM"])
def test_every_sampler_is_guided_inside_the_window(
    engine: DiffusersEngine, sampler: str, guided_calls: list[int]
) -> None:
    plain = _run(engine, sampler=sampler)
    late = _run(engine, (_unit(guidance_start=0.5),), sampler=sampler)
    assert _differ(late, plain)
    assert 0 < guided_calls[-1] < (7 if sampler == "Heun" else 4)  # Heun evaluates twice a step


@pytest.mark.parametrize("mode", list(ControlMode))
def test_batches_and_guidance_variants_run(engine: DiffusersEngine, mode: ControlMode) -> None:
    """Two images a batch, AND prompts (extra UNet calls on the cond half), NGMS (calls of the
    cond half alone) and no CFG at all: each image guided, and weight 0 still the plain image."""
    for fields in (
        {"batch_size": 2, "prompt": "a red circle AND a blue square", "s_min_uncond": 100.0},
        {"batch_size": 2, "cfg_scale": 1.0},
    ):
        plain = _run(engine, **fields)
        guided = _run(engine, (_unit(control_mode=mode),), **fields)
        off = _run(engine, (_unit(control_mode=mode, weight=0.0),), **fields)
        for a, b, c in zip(plain.images, guided.images, off.images, strict=True):
            assert int(np.abs(np.asarray(a.image, dtype=int) - np.asarray(b.image, dtype=int)).max()) > 2
            assert np.array_equal(np.asarray(a.image), np.asarray(c.image))


def test_controlnets_are_cached_and_unload_drops_them(engine: DiffusersEngine) -> None:
    fresh = DiffusersEngine(engine.settings, ModelCatalog(engine.settings, builtin_dir=None))  # few to unload
    _run(fresh, (_unit(),))
    keys = [k for k in fresh.cache.keys_by_age() if k.startswith(controlnet_units.CACHE_PREFIX)]
    assert len(keys) == 1
    entry = fresh.cache.get(keys[0])
    net = entry.pipeline  # type: ignore[union-attr]
    _run(fresh, (_unit(),))
    assert fresh.cache.get(keys[0]).pipeline is net  # type: ignore[union-attr]  # not loaded again
    assert fresh.loaded_models() == ["tiny-sd15"]  # the ControlNet is not a model to list
    fresh.unload()
    assert fresh.cache.keys_by_age() == []
    assert entry.pipeline is None  # type: ignore[union-attr]


def test_the_hook_matches_diffusers_own_controlnet_pipeline() -> None:
    """The same components, prompt and noise through diffusers' ``StableDiffusionControlNetPipeline``
    and through the plain pipeline inside ``controlled``: the same image (CFG halves, timesteps and
    the control image's format all as diffusers' reference has them)."""
    import torch
    from diffusers import StableDiffusionControlNetPipeline

    from sdgate.engine.controlnet import scheduler_progress
    from tests import tinymodels as tm

    pipe = tm.tiny_sd(0)
    pipe.set_progress_bar_config(disable=True)
    net = _tiny_controlnet(pipe.unet, seed=11).eval()
    reference = StableDiffusionControlNetPipeline(**pipe.components, controlnet=net)
    reference.set_progress_bar_config(disable=True)
    image = _picture(0)
    latents = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    common: dict[str, Any] = {"num_inference_steps": 4, "output_type": "np", "guidance_scale": 6.0}
    expected = reference(
        "a red circle", image=image, latents=latents, controlnet_conditioning_scale=0.7, **common
    ).images
    hint = ControlHint(net, control_tensor(image), weight=0.7)
    with controlled(pipe.unet, [hint], scheduler_progress(lambda: pipe.scheduler), batch=1) as hook:
        got = pipe("a red circle", latents=latents, **common).images
    plain = pipe("a red circle", latents=latents, **common).images
    assert hook.calls == 4
    assert float(np.abs(expected - got).max()) < 1e-4
    assert float(np.abs(expected - plain).max()) > 1e-2


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
@pytest.mark.parametrize("layout", ["ldm", "diffusers"])
def test_full_size_configs_come_from_the_shapes(family: str, layout: str) -> None:
    """A full-size SD 1.5 / SDXL ControlNet (meta tensors: no memory) in either single-file layout
    gets back exactly its own config, and its keys convert onto the model's, shape for shape."""
    from accelerate import init_empty_weights
    from diffusers import ControlNetModel, UNet2DConditionModel

    from sdgate.engine import controlnet_loading as cl
    from sdgate.engine.configs import shipped_configs

    unet_config = shipped_configs(family)["unet"]
    with init_empty_weights(include_buffers=True):
        net = ControlNetModel.from_unet(
            UNet2DConditionModel.from_config(unet_config), load_weights_from_unet=False
        )
    state = _ldm(net) if layout == "ldm" else dict(net.state_dict())
    state = {k.removeprefix(cl.LDM_PREFIX): v for k, v in state.items()}
    assert cl.family_of_state(state) == family
    if layout == "ldm":
        config = cl._config_from_ldm_keys(state, unet_config)
        converted = cl._convert_ldm(state, config)
    else:
        config = cl._config_from_diffusers_keys(state, unet_config)
        converted = state
    for key, value in config.items():
        expected = net.config[key]
        assert (list(value) if isinstance(value, tuple | list) else value) == (
            list(expected) if isinstance(expected, tuple | list) else expected
        ), key
    with init_empty_weights(include_buffers=True):
        rebuilt = ControlNetModel.from_config(config)
    wanted = {k: tuple(v.shape) for k, v in rebuilt.state_dict().items()}
    assert {k: tuple(v.shape) for k, v in converted.items()} == wanted
