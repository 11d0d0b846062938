"""ComfyUI graphs run by ``engine.comfy.executor`` on the tiny SD 1.5, in a ComfyUI-layout models dir."""

from __future__ import annotations

import copy
import hashlib
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from sdgate.core.engine import EngineInputs, EngineOutput, NoControl, StepAction, StepReport
from sdgate.core.errors import JobCancelled, NotFound
from sdgate.core.models import ModelCatalog
from sdgate.core.requests import GenerationRequest, GraphRequest
from sdgate.engine.comfy.executor import cache_for, cached_nodes, execution_order, run_graph
from sdgate.engine.comfy.values import Latent
from sdgate.engine.diffusers_engine import DiffusersEngine
from sdgate.engine.null import NullEngine
from sdgate.settings import Settings
from tests import comfy_graphs
from tests.engine.spandrel_models import write_upscaler
from tests.engine.test_lora import make_lora
from tests.engine.test_vae import vae_state, write_vae

CKPT = "tiny.safetensors"
SIZE = 64
STEPS = 3


@pytest.fixture(scope="module")
def comfy_engine(tiny_models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> DiffusersEngine:
    models = tmp_path_factory.mktemp("comfy-models")
    (models / "checkpoints").mkdir()
    (models / "checkpoints" / CKPT).symlink_to(tiny_models_dir / "Stable-diffusion" / "tiny-sd15.safetensors")
    for name in (
        "tiny-sdxl.safetensors",
        "tiny-sd15-f4.safetensors",
        "tiny-sd2-v.safetensors",
        "tiny-sd2-v.yaml",
    ):
        (models / "checkpoints" / name).symlink_to(tiny_models_dir / "Stable-diffusion" / name)
    make_lora(models / "loras" / "ink.safetensors", "kohya", 1)
    write_vae(models / "vae" / "other.safetensors", vae_state(3, "ldm"))
    write_upscaler(models, "Compact", name="tiny-x")
    settings = Settings(data_dir=tmp_path_factory.mktemp("data"), models_dir=models, device="cpu")
    return DiffusersEngine(settings, ModelCatalog(settings, builtin_dir=None))


def txt2img(
    seed: int = 7, *, prompt: str = "a red circle", batch: int = 1, ckpt: str = CKPT, **sampler: Any
) -> dict[str, Any]:
    """The canonical txt2img graph (``reference/other_apis.md`` §1.7), tiny."""
    ks = {
        "seed": seed, "steps": STEPS, "cfg": 7.0, "sampler_name": "euler", "scheduler": "normal",
        "denoise": 1.0, "model": ["4", 0], "positive": ["6", 0], "negative": ["7", 0],
        "latent_image": ["5", 0],
    }  # fmt: skip
    ks.update(sampler)
    return {
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "5": {
            "class_type": "EmptyLatentImage",
            "inputs": {"width": SIZE, "height": SIZE, "batch_size": batch},
        },
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": prompt, "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": ["4", 1]}},
        "3": {"class_type": "KSampler", "inputs": ks},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "ComfyUI", "images": ["8", 0]}},
    }


def img2img(denoise: float) -> dict[str, Any]:
    graph = txt2img(denoise=denoise)
    graph["10"] = {"class_type": "LoadImage", "inputs": {"image": "in.png"}}
    graph["5"] = {"class_type": "VAEEncode", "inputs": {"pixels": ["10", 0], "vae": ["4", 2]}}
    return graph


def with_lora(strength: float, clip_strength: float | None = None) -> dict[str, Any]:
    graph = txt2img()
    graph["11"] = {
        "class_type": "LoraLoader",
        "inputs": {
            "model": ["4", 0], "clip": ["4", 1], "lora_name": "ink.safetensors",
            "strength_model": strength, "strength_clip": strength if clip_strength is None else clip_strength,
        },
    }  # fmt: skip
    graph["3"]["inputs"]["model"] = ["11", 0]
    graph["6"]["inputs"]["clip"] = ["11", 1]
    graph["7"]["inputs"]["clip"] = ["11", 1]
    return graph


def request(
    graph: dict[str, Any], outputs: tuple[str, ...] = ("9",), images: tuple[str, ...] = (),
    pictures: tuple[Image.Image, ...] = (),
) -> GraphRequest:  # fmt: skip
    # Image ids are the store's content ids: one per picture, as an upload gives.
    ids = [hashlib.sha256(p.tobytes() + p.mode.encode()).hexdigest()[:16] for p in pictures]
    return GraphRequest(graph=graph, outputs=outputs, images=tuple(zip(images, ids, strict=True)))


def run(
    engine: Any, graph: dict[str, Any], *, control: Any = None, pictures: tuple[Image.Image, ...] = (),
    images: tuple[str, ...] = (), outputs: tuple[str, ...] = ("9",),
) -> EngineOutput:  # fmt: skip
    return run_graph(
        engine,
        request(graph, outputs, images, pictures),
        EngineInputs(init_images=pictures),
        control or NoControl(),
    )


def pixels(out: EngineOutput, i: int = 0) -> np.ndarray:
    return np.asarray(out.images[i].image, dtype=np.float32)


def gradient(alpha: np.ndarray | None = None) -> Image.Image:
    y, x = np.mgrid[0:SIZE, 0:SIZE]
    rgb = np.stack([x * 4, y * 4, np.full_like(x, 128)], axis=-1).astype(np.uint8)
    if alpha is None:
        return Image.fromarray(rgb, "RGB")
    return Image.fromarray(np.dstack([rgb, alpha.astype(np.uint8)]), "RGBA")


def round_trip(engine: Any, source: Image.Image) -> np.ndarray:
    """``source`` through the model's VAE and back."""
    graph = {
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": CKPT}},
        "10": {"class_type": "LoadImage", "inputs": {"image": "in.png"}},
        "20": {"class_type": "VAEEncode", "inputs": {"pixels": ["10", 0], "vae": ["4", 2]}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["20", 0], "vae": ["4", 2]}},
        "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "x", "images": ["8", 0]}},
    }
    out = run(engine, graph, pictures=(source,), images=("in.png",))
    assert out.images[0].infotext == ""  # no sampler made it
    return pixels(out)


class Recorder:
    """A control that records every report and answers ``answer`` from the ``at``-th report on."""

    def __init__(self, answer: StepAction = StepAction.CONTINUE, at: int = 0) -> None:
        self.reports: list[StepReport] = []
        self.answer, self.at = answer, at

    def on_step(self, report: StepReport) -> StepAction:
        self.reports.append(report)
        return self.answer if len(self.reports) >= self.at else StepAction.CONTINUE


def test_order_puts_dependencies_first_and_only_what_outputs_need() -> None:
    graph = txt2img()
    graph["99"] = {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}}
    order = execution_order(graph, ["9"])
    assert "99" not in order and order[-1] == "9"
    for node_id in order:
        for value in graph[node_id]["inputs"].values():
            if isinstance(value, list):
                assert order.index(value[0]) < order.index(node_id)


def test_txt2img_gives_the_asked_size_and_output_nodes(comfy_engine: DiffusersEngine) -> None:
    out = run(comfy_engine, txt2img(batch=2))
    assert [img.image.size for img in out.images] == [(SIZE, SIZE)] * 2
    assert out.node_outputs["9"].indices == (0, 1) and out.node_outputs["9"].kind == "output"
    assert (out.width, out.height, out.steps, out.sampler) == (SIZE, SIZE, STEPS, "Euler")
    info = out.images[0].infotext
    assert info.startswith("a red circle\nNegative prompt: blurry\n")
    assert "Steps: 3" in info and "Sampler: Euler" in info and "Seed: 7" in info and "Size: 64x64" in info
    assert json.loads(out.images[0].image.info["prompt"])["3"]["class_type"] == "KSampler"
    assert out.model_name == "tiny"


def test_the_same_graph_twice_gives_the_same_pixels_from_the_cache(comfy_engine: DiffusersEngine) -> None:
    cache_for(comfy_engine).clear()
    first = run(comfy_engine, txt2img(seed=11))
    assert cached_nodes(first.notes) == []
    control = Recorder()
    announced: list[list[str]] = []
    control.on_cached = announced.append  # type: ignore[attr-defined]
    second = run(comfy_engine, txt2img(seed=11), control=control)
    assert announced == [cached_nodes(second.notes)]
    np.testing.assert_array_equal(pixels(first), pixels(second))
    assert set(cached_nodes(second.notes)) == {"4", "5", "6", "7", "3", "8"}
    assert [r.node for r in control.reports] == ["9"]  # only the output node ran
    assert (second.sampler, second.steps, second.width) == ("Euler", STEPS, SIZE)
    assert second.images[0].infotext == first.images[0].infotext
    third = run(comfy_engine, txt2img(seed=12))  # a new seed: the sampler runs, the prompts do not
    assert {"6", "7"} <= set(cached_nodes(third.notes)) and "3" not in cached_nodes(third.notes)
    assert not np.array_equal(pixels(first), pixels(third))


def test_node_progress_carries_node_ids_in_order(comfy_engine: DiffusersEngine) -> None:
    cache_for(comfy_engine).clear()
    control = Recorder()
    run(comfy_engine, txt2img(seed=3), control=control)
    starts = [r.node for r in control.reports if r.step == 0]
    assert starts == execution_order(txt2img(), ["9"])
    steps = [(r.step, r.steps) for r in control.reports if r.node == "3" and r.step > 0]
    assert steps == [(1, STEPS), (2, STEPS), (3, STEPS)]
    sampler_reports = [r for r in control.reports if r.node == "3" and r.step > 0]
    assert sampler_reports[-1].preview is not None
    assert isinstance(sampler_reports[-1].preview(), Image.Image)


def test_img2img_with_low_denoise_stays_closer_to_the_input(comfy_engine: DiffusersEngine) -> None:
    source = gradient()
    near = run(comfy_engine, img2img(0.3), pictures=(source,), images=("in.png",))
    far = run(comfy_engine, img2img(1.0), pictures=(source,), images=("in.png",))
    original = round_trip(comfy_engine, source)  # the tiny random VAE is lossy: compare with its copy
    assert near.images[0].image.size == (SIZE, SIZE)
    assert np.abs(pixels(near) - original).mean() < np.abs(pixels(far) - original).mean()
    assert "Denoising strength: 0.3" in near.images[0].infotext


@pytest.mark.parametrize("encoder", ["VAEEncodeForInpaint", "SetLatentNoiseMask"])
def test_inpaint_keeps_unmasked_pixels_close(comfy_engine: DiffusersEngine, encoder: str) -> None:
    alpha = np.full((SIZE, SIZE), 255)
    alpha[:, SIZE // 2 :] = 0  # transparent right half: inpaint there (mask = 1 - alpha)
    source = gradient(alpha)
    graph = txt2img(denoise=1.0 if encoder == "VAEEncodeForInpaint" else 0.8)
    graph["10"] = {"class_type": "LoadImage", "inputs": {"image": "in.png"}}
    graph["20"] = {"class_type": "VAEEncode", "inputs": {"pixels": ["10", 0], "vae": ["4", 2]}}
    if encoder == "VAEEncodeForInpaint":
        inputs = {"pixels": ["10", 0], "vae": ["4", 2], "mask": ["10", 1], "grow_mask_by": 0}
        graph["5"] = {"class_type": encoder, "inputs": inputs}
    else:
        graph["5"] = {"class_type": encoder, "inputs": {"samples": ["20", 0], "mask": ["10", 1]}}
    cache_for(comfy_engine).clear()
    out = run(comfy_engine, graph, pictures=(source,), images=("in.png",))
    assert out.images[0].image.size == (SIZE, SIZE)
    # The latents themselves (the tiny random VAE mixes the whole picture when decoding): the
    # sampler's result equals the encoded image where the mask is 0 and differs where it is 1.
    latents = [
        value[0]
        for value, _ in cache_for(comfy_engine)._items.values()
        if value and isinstance(value[0], Latent)
    ]
    (original,) = [lat for lat in latents if lat.noise_mask is not None and lat.info is None]
    (sampled,) = [lat for lat in latents if lat.info is not None]
    half = original.samples.shape[-1] // 2
    assert torch.equal(sampled.samples[..., :half], original.samples[..., :half].float())
    assert (sampled.samples[..., half:] - original.samples[..., half:]).abs().mean() > 0.1


def test_lora_strength_zero_is_no_lora_and_positive_differs(comfy_engine: DiffusersEngine) -> None:
    base = pixels(run(comfy_engine, txt2img()))
    zero = pixels(run(comfy_engine, with_lora(0.0)))
    np.testing.assert_array_equal(base, zero)
    strong = pixels(run(comfy_engine, with_lora(1.0)))
    assert np.abs(strong - base).mean() > 1.0
    model_only = txt2img()
    model_only["11"] = {
        "class_type": "LoraLoaderModelOnly",
        "inputs": {"model": ["4", 0], "lora_name": "ink.safetensors", "strength_model": 1.0},
    }
    model_only["3"]["inputs"]["model"] = ["11", 0]
    unet_only = pixels(run(comfy_engine, model_only))
    np.testing.assert_array_equal(unet_only, pixels(run(comfy_engine, with_lora(1.0, clip_strength=0.0))))


def test_a_lora_does_not_leak_into_the_next_run(comfy_engine: DiffusersEngine) -> None:
    cache_for(comfy_engine).clear()
    base = pixels(run(comfy_engine, txt2img(seed=5)))
    run(comfy_engine, with_lora(1.0))
    cache_for(comfy_engine).clear()  # nothing served from the cache: the weights themselves are base
    np.testing.assert_array_equal(base, pixels(run(comfy_engine, txt2img(seed=5))))


def test_a_failed_run_leaves_base_weights(comfy_engine: DiffusersEngine) -> None:
    cache_for(comfy_engine).clear()
    base = pixels(run(comfy_engine, txt2img(seed=6)))
    graph = with_lora(1.0)
    graph["8"]["inputs"]["samples"] = ["3", 5]  # no such output: fails after sampling with the LoRA
    with pytest.raises(Exception, match="no output 5"):
        run(comfy_engine, graph)
    missing = with_lora(1.0)
    missing["11"]["inputs"]["lora_name"] = "nothing.safetensors"
    with pytest.raises(NotFound) as failed:
        run(comfy_engine, missing)
    assert failed.value.field == "node:11" and failed.value.comfy_node_type == "LoraLoader"  # type: ignore[attr-defined]
    cache_for(comfy_engine).clear()
    np.testing.assert_array_equal(base, pixels(run(comfy_engine, txt2img(seed=6))))


def test_latent_hires_gives_the_upscaled_size(comfy_engine: DiffusersEngine) -> None:
    graph = txt2img()
    graph["12"] = {
        "class_type": "LatentUpscaleBy",
        "inputs": {"samples": ["3", 0], "upscale_method": "nearest-exact", "scale_by": 1.5},
    }
    second = copy.deepcopy(graph["3"]["inputs"]) | {"latent_image": ["12", 0], "denoise": 0.5}
    graph["13"] = {"class_type": "KSampler", "inputs": second}
    graph["8"]["inputs"]["samples"] = ["13", 0]
    out = run(comfy_engine, graph)
    assert out.images[0].image.size == (96, 96) and (out.width, out.height) == (96, 96)
    graph["12"] = {
        "class_type": "LatentUpscale",
        "inputs": {
            "samples": ["3", 0],
            "upscale_method": "bilinear",
            "width": 128,
            "height": 96,
            "crop": "center",
        },
    }
    assert run(comfy_engine, graph).images[0].image.size == (128, 96)


def test_image_scale_and_preview(comfy_engine: DiffusersEngine) -> None:
    graph = txt2img()
    graph["14"] = {
        "class_type": "ImageScale",
        "inputs": {
            "image": ["8", 0],
            "upscale_method": "lanczos",
            "width": 100,
            "height": 0,
            "crop": "disabled",
        },
    }
    graph["15"] = {"class_type": "PreviewImage", "inputs": {"images": ["14", 0]}}
    half = {"image": ["8", 0], "upscale_method": "bilinear", "scale_by": 0.5}
    graph["16"] = {"class_type": "ImageScaleBy", "inputs": half}
    graph["17"] = {"class_type": "PreviewImage", "inputs": {"images": ["16", 0]}}
    out = run(comfy_engine, graph, outputs=("9", "15", "17"))
    sizes = {
        node: [out.images[i].image.size for i in images.indices] for node, images in out.node_outputs.items()
    }
    assert sizes == {"9": [(64, 64)], "15": [(100, 100)], "17": [(32, 32)]}
    assert out.node_outputs["15"].kind == "temp"


def test_advanced_sampler_in_two_stages_and_combined_conditioning(comfy_engine: DiffusersEngine) -> None:
    graph = txt2img()
    common = {k: v for k, v in graph["3"]["inputs"].items() if k not in ("seed", "denoise")}
    first = common | {"add_noise": "enable", "noise_seed": 7, "start_at_step": 0, "end_at_step": 2,
                      "return_with_leftover_noise": "enable", "steps": 4}  # fmt: skip
    second = common | {"add_noise": "disable", "noise_seed": 7, "start_at_step": 2, "end_at_step": 10000,
                       "return_with_leftover_noise": "disable", "steps": 4}  # fmt: skip
    second["latent_image"] = ["3", 0]
    graph["3"] = {"class_type": "KSamplerAdvanced", "inputs": first}
    graph["13"] = {"class_type": "KSamplerAdvanced", "inputs": second}
    graph["8"]["inputs"]["samples"] = ["13", 0]
    graph["18"] = {"class_type": "CLIPTextEncode", "inputs": {"text": "a blue square", "clip": ["4", 1]}}
    graph["19"] = {
        "class_type": "ConditioningSetArea",
        "inputs": {"conditioning": ["18", 0], "width": 32, "height": 32, "x": 0, "y": 0, "strength": 1.0},
    }
    graph["21"] = {
        "class_type": "ConditioningCombine",
        "inputs": {"conditioning_1": ["6", 0], "conditioning_2": ["19", 0]},
    }
    graph["13"]["inputs"]["positive"] = ["21", 0]
    out = run(comfy_engine, graph)
    image = pixels(out)
    assert image.shape == (SIZE, SIZE, 3) and np.isfinite(image).all()
    assert "a red circle AND a blue square" in out.images[0].infotext


@pytest.mark.parametrize("answer", [StepAction.CANCEL, StepAction.INTERRUPT])
def test_cancel_or_interrupt_before_any_output_raises(
    comfy_engine: DiffusersEngine, answer: StepAction
) -> None:
    cache_for(comfy_engine).clear()
    with pytest.raises(JobCancelled):
        run(comfy_engine, txt2img(seed=21), control=Recorder(answer, at=6))  # during the sampler


def test_interrupt_after_an_output_returns_it(comfy_engine: DiffusersEngine) -> None:
    graph = txt2img()
    second = copy.deepcopy(graph["3"]["inputs"]) | {"seed": 99}
    graph["13"] = {"class_type": "KSampler", "inputs": second}
    graph["22"] = {"class_type": "VAEDecode", "inputs": {"samples": ["13", 0], "vae": ["4", 2]}}
    graph["23"] = {"class_type": "SaveImage", "inputs": {"filename_prefix": "B", "images": ["22", 0]}}

    class AfterFirstSave(Recorder):
        def on_step(self, report: StepReport) -> StepAction:
            self.reports.append(report)
            saved = any(r.node == "9" for r in self.reports)
            return (
                StepAction.INTERRUPT
                if saved and report.node == "13" and report.step == 1
                else StepAction.CONTINUE
            )

    out = run(comfy_engine, graph, control=AfterFirstSave(), outputs=("9", "23"))
    assert out.interrupted and list(out.node_outputs) == ["9"] and len(out.images) == 1


def test_null_engine_gives_blank_images_of_the_graph_sizes(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, models_dir=tmp_path / "models", engine="null")
    engine = NullEngine(settings, ModelCatalog(settings, builtin_dir=None))
    graph = txt2img(batch=2)
    double = {"samples": ["3", 0], "upscale_method": "bislerp", "scale_by": 2.0}
    graph["12"] = {"class_type": "LatentUpscaleBy", "inputs": double}
    graph["8"]["inputs"]["samples"] = ["12", 0]
    control = Recorder()
    out = run(engine, graph, control=control)
    assert [img.image.size for img in out.images] == [(128, 128)] * 2
    assert [r.step for r in control.reports if r.node == "3"] == [0, 1, 2, 3]
    assert out.sampler == "Euler" and "Sampler: Euler" in out.images[0].infotext
    assert out.images[0].infotext.startswith("a red circle\nNegative prompt: blurry\n")
    buffer = io.BytesIO()
    out.images[0].image.save(buffer, format="PNG")


def test_clip_set_last_layer_changes_the_conditioning(comfy_engine: DiffusersEngine) -> None:
    def skipping(layer: int) -> dict[str, Any]:
        graph = txt2img()
        graph["24"] = {
            "class_type": "CLIPSetLastLayer",
            "inputs": {"clip": ["4", 1], "stop_at_clip_layer": layer},
        }
        graph["6"]["inputs"]["clip"] = graph["7"]["inputs"]["clip"] = ["24", 0]
        return graph

    last = pixels(run(comfy_engine, skipping(-1)))
    np.testing.assert_array_equal(last, pixels(run(comfy_engine, txt2img())))
    assert not np.array_equal(last, pixels(run(comfy_engine, skipping(-2))))


def test_vae_loader_decodes_with_the_file(comfy_engine: DiffusersEngine) -> None:
    graph = txt2img()
    graph["25"] = {"class_type": "VAELoader", "inputs": {"vae_name": "other.safetensors"}}
    graph["8"]["inputs"]["vae"] = ["25", 0]
    other = pixels(run(comfy_engine, graph))
    own = pixels(run(comfy_engine, txt2img()))
    assert other.shape == own.shape and not np.array_equal(other, own)
    np.testing.assert_array_equal(
        own, pixels(run(comfy_engine, txt2img()))
    )  # the model's VAE is its own again


def test_upscale_model_multiplies_the_size(comfy_engine: DiffusersEngine) -> None:
    graph = txt2img()
    graph["26"] = {"class_type": "UpscaleModelLoader", "inputs": {"model_name": "tiny-x.safetensors"}}
    graph["27"] = {
        "class_type": "ImageUpscaleWithModel",
        "inputs": {"upscale_model": ["26", 0], "image": ["8", 0]},
    }
    graph["9"]["inputs"]["images"] = ["27", 0]
    out = run(comfy_engine, graph)
    width, height = out.images[0].image.size
    assert width == height and width > SIZE and width % SIZE == 0
    assert f"Size: {width}x{height}" in out.images[0].infotext


@pytest.mark.parametrize(
    "ckpt", ["tiny-sdxl.safetensors", "tiny-sd15-f4.safetensors", "tiny-sd2-v.safetensors"]
)
def test_other_families_and_vae_factors(comfy_engine: DiffusersEngine, ckpt: str) -> None:
    graph = txt2img(ckpt=ckpt)
    graph["12"] = {
        "class_type": "LatentUpscaleBy",
        "inputs": {"samples": ["3", 0], "upscale_method": "bilinear", "scale_by": 1.5},
    }
    second = copy.deepcopy(graph["3"]["inputs"]) | {"latent_image": ["12", 0], "denoise": 0.5}
    graph["13"] = {"class_type": "KSampler", "inputs": second}
    graph["8"]["inputs"]["samples"] = ["13", 0]
    out = run(comfy_engine, graph)
    assert out.images[0].image.size == (96, 96)
    assert np.isfinite(pixels(out)).all() and pixels(out).std() > 0
    assert out.model_name == ckpt.removesuffix(".safetensors")


def canonical(name: str) -> tuple[dict[str, Any], tuple[str, ...]]:
    """A graph of ``tests/comfy_graphs.py``, tiny, and the files its LoadImage nodes read."""
    small = {"steps": 2, "width": SIZE, "height": SIZE}
    graphs = {
        "txt2img": lambda: comfy_graphs.txt2img(CKPT, **small),
        "img2img": lambda: comfy_graphs.img2img(CKPT, "in.png", **small),
        "inpaint": lambda: comfy_graphs.inpaint(CKPT, "in.png", **small),
        "inpaint_noise_mask": lambda: comfy_graphs.inpaint_noise_mask(CKPT, "in.png", "mask.png"),
        "lora": lambda: comfy_graphs.lora(CKPT, "ink.safetensors", strength_model=0.5, **small),
        "hires": lambda: comfy_graphs.hires(CKPT, width=SIZE, height=SIZE, steps=2, second_steps=2),
        "upscale_with_model": lambda: comfy_graphs.upscale_with_model(CKPT, "tiny-x.safetensors"),
    }
    graph = graphs[name]()
    for node in graph.values():  # the graphs' own defaults are full-size
        inputs = node["inputs"]
        if node["class_type"] in ("KSampler", "KSamplerAdvanced"):
            inputs["steps"] = min(inputs["steps"], 2)
        if node["class_type"] == "EmptyLatentImage":
            inputs["width"] = inputs["height"] = SIZE
    files = tuple(
        sorted(
            {
                n["inputs"]["image"]
                for n in graph.values()
                if n["class_type"] in ("LoadImage", "LoadImageMask")
            }
        )
    )
    return graph, files


@pytest.mark.parametrize(
    "name", ["txt2img", "img2img", "inpaint", "inpaint_noise_mask", "lora", "hires", "upscale_with_model"]
)
def test_canonical_graphs_run_and_the_null_engine_gives_the_same_sizes(
    comfy_engine: DiffusersEngine, name: str
) -> None:
    graph, files = canonical(name)
    alpha = np.full((SIZE, SIZE), 255)
    alpha[16:48, 16:48] = 0
    pictures = tuple(gradient(alpha) for _ in files)
    outputs = tuple(k for k, n in graph.items() if n["class_type"] in ("SaveImage", "PreviewImage"))
    out = run(comfy_engine, graph, pictures=pictures, images=files, outputs=outputs)
    null = NullEngine(comfy_engine.settings, comfy_engine.catalog)
    blank = run(null, copy.deepcopy(graph), pictures=pictures, images=files, outputs=outputs)
    assert out.images and [i.image.size for i in out.images] == [i.image.size for i in blank.images]
    assert {k: v.indices for k, v in out.node_outputs.items()} == {
        k: v.indices for k, v in blank.node_outputs.items()
    }
    assert all(np.isfinite(pixels(out, i)).all() for i in range(len(out.images)))


@pytest.mark.parametrize(
    ("comfy", "ours", "schedule", "tolerance", "ckpt"),
    [
        ("euler", "Euler", "normal", 0, CKPT),
        ("euler_ancestral", "Euler a", "normal", 0, CKPT),
        ("dpmpp_2m", "DPM++ 2M", "karras", 1, CKPT),
        ("euler", "Euler", "normal", 0, "tiny-sd2-v.safetensors"),  # v-prediction
        ("ddim", "DDIM", "normal", 1, "tiny-sdxl.safetensors"),
    ],
)
def test_a_graph_draws_what_the_engine_draws(
    comfy_engine: DiffusersEngine, comfy: str, ours: str, schedule: str, tolerance: int, ckpt: str
) -> None:
    """One image, same seed, sampler, steps and prompts: the graph's own loop gives the engine's pixels
    (the first image of a batch is the seed's own noise in both)."""
    graph = run(comfy_engine, txt2img(seed=5, sampler_name=comfy, scheduler=schedule, ckpt=ckpt))
    asked = GenerationRequest(
        prompt="a red circle", negative_prompt="blurry", model=ckpt, width=SIZE, height=SIZE, steps=STEPS,
        seed=5, cfg_scale=7.0, sampler=ours, scheduler=schedule,
    )  # fmt: skip
    plain = comfy_engine.generate(asked, EngineInputs(), NoControl())
    assert np.abs(pixels(graph) - np.asarray(plain.images[0].image, dtype=np.float32)).max() <= tolerance


@pytest.mark.slow
def test_the_demo_model_draws_a_red_circle_through_a_graph(tmp_path: Path) -> None:
    """The built-in demo model (VAE factor 16) through the canonical graph: its red circle, and the
    engine's own pixels for the same request."""
    settings = Settings(data_dir=tmp_path, models_dir=tmp_path / "models", device="cpu")
    engine = DiffusersEngine(settings, ModelCatalog(settings))
    demo = engine.catalog.default
    graph = comfy_graphs.txt2img(demo.relpath, seed=1, steps=20, width=256, height=256, cfg=7.0,
                                 positive="a red circle", negative="")  # fmt: skip
    out = run(engine, graph)
    red, green, blue = pixels(out).reshape(-1, 3).mean(axis=0)
    assert out.images[0].image.size == (256, 256) and red > 2 * max(green, blue)
    asked = GenerationRequest(prompt="a red circle", width=256, height=256, steps=20, seed=1, cfg_scale=7.0,
                              sampler="Euler", scheduler="normal")  # fmt: skip
    plain = engine.generate(asked, EngineInputs(), NoControl())
    np.testing.assert_array_equal(pixels(out), np.asarray(plain.images[0].image, dtype=np.float32))


@pytest.mark.parametrize(
    ("sampler", "scheduler"), [("euler", "normal"), ("ddim", "normal"), ("dpmpp_2m", "karras")]
)
def test_two_advanced_stages_equal_one_run(
    comfy_engine: DiffusersEngine, sampler: str, scheduler: str
) -> None:
    """Steps 0..2 with leftover noise, then 2..4 adding none, is one 4-step run (ComfyUI's split
    workflow); the leftover noise crosses in k-diffusion space, so VP-space samplers split too."""

    def advanced(start: int, end: int, leftover: bool, noise: bool, latent: list[Any]) -> dict[str, Any]:
        inputs = {k: v for k, v in txt2img()["3"]["inputs"].items() if k not in ("seed", "denoise")}
        return {"class_type": "KSamplerAdvanced", "inputs": inputs | {
            "sampler_name": sampler, "scheduler": scheduler, "steps": 4, "noise_seed": 9,
            "latent_image": latent, "start_at_step": start, "end_at_step": end,
            "add_noise": "enable" if noise else "disable",
            "return_with_leftover_noise": "enable" if leftover else "disable"}}  # fmt: skip

    whole = txt2img()
    whole["3"] = advanced(0, 10000, False, True, ["5", 0])
    split = txt2img()
    split["3"] = advanced(0, 2, True, True, ["5", 0])
    split["13"] = advanced(2, 10000, False, False, ["3", 0])
    split["8"]["inputs"]["samples"] = ["13", 0]
    one, two = pixels(run(comfy_engine, whole)), pixels(run(comfy_engine, split))
    if sampler == "euler":
        np.testing.assert_array_equal(one, two)
    else:  # float rounding through the space change; DPM++ 2M restarts its history (as ComfyUI's does)
        assert np.abs(one - two).mean() < 1.0
    if sampler != "euler":
        return
    # Ending early without leftover noise lands on a clean image: nearer the full run than the
    # first stage decoded with its leftover noise.
    early, noisy = txt2img(), txt2img()
    early["3"] = advanced(0, 2, False, True, ["5", 0])
    noisy["3"] = advanced(0, 2, True, True, ["5", 0])
    clean, rough = pixels(run(comfy_engine, early)), pixels(run(comfy_engine, noisy))
    assert np.abs(clean - one).mean() < np.abs(rough - one).mean()


def sampled(engine: Any, graph: dict[str, Any]) -> Latent:
    """The sampler's latent of a one-sampler ``graph`` (read from the node cache)."""
    cache_for(engine).clear()
    run(engine, graph)
    values = [value for value, _ in cache_for(engine)._items.values()]
    (latent,) = [v[0] for v in values if v and isinstance(v[0], Latent) and v[0].info is not None]
    return latent


def test_an_area_conditioning_acts_on_its_area_only(comfy_engine: DiffusersEngine) -> None:
    plain = txt2img(steps=1)  # one step: later steps see the changed half through the UNet's convolutions
    area = txt2img(steps=1)
    area["18"] = {"class_type": "CLIPTextEncode", "inputs": {"text": "a blue square", "clip": ["4", 1]}}
    area["19"] = {
        "class_type": "ConditioningSetArea",
        "inputs": {"conditioning": ["18", 0], "width": 32, "height": 64, "x": 0, "y": 0, "strength": 1.0},
    }
    both = {"conditioning_1": ["6", 0], "conditioning_2": ["19", 0]}
    area["21"] = {"class_type": "ConditioningCombine", "inputs": both}
    area["3"]["inputs"]["positive"] = ["21", 0]
    base, mixed = sampled(comfy_engine, plain).samples, sampled(comfy_engine, area).samples
    half = base.shape[-1] // 2  # the area is the left half: the right half is the plain prompt's alone
    assert torch.equal(base[..., half:], mixed[..., half:])
    assert (base[..., :half] - mixed[..., :half]).abs().mean() > 0.01
