"""The demo ControlNet's evaluator: does the generated shape's outline follow the control edges?

For held-out scenes (``controlnet_train.CONTROL_EVAL_BASE`` up, never drawn in training; scenes
whose outline has no canny edge at all are skipped, they give nothing to follow) the scene is
rendered at the generation size and its canny edge map (grey, thresholds 100/200: the ``canny``
preprocessor) is the control image. The demo model draws the scene's caption with the demo
ControlNet guiding, and the canny edges of the generated image (same canny) are scored against
the control edges by IoU after dilating both maps by ``TOLERANCE_PX`` pixels (an elliptical
``2 * TOLERANCE_PX + 1`` kernel): the usual tolerance of edge IoU, so an outline one or two pixels
off still counts. The same prompts and seeds without the ControlNet give the baseline; the
VAE's own round trip of each scene gives the ceiling (no generation can draw sharper edges than
the demo VAE decodes). Target: mean IoU >= 0.6 with the ControlNet.

Generation goes through sdgate's engine (``EngineGenerator``: ``DiffusersEngine.generate`` with a
``ControlNetUnit`` naming the catalog's built-in ``control_sdgate_demo_canny``), or straight through
diffusers' ``StableDiffusionControlNetPipeline`` (``DiffusersGenerator``, a cross-check).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from sdgate.demo import controlnet_train as ct
from sdgate.demo import dataset as ds

TARGET_IOU = 0.6
TOLERANCE_PX = 2


@dataclass
class ControlEvalSettings:
    n: int = 32
    size: int = 256
    steps: int = 20
    cfg: float = 4.0  # the demo model's recommended guidance
    sampler: str = "Euler"
    seed: int = 0  # offset into the held-out range
    tolerance: int = TOLERANCE_PX
    weight: float = 1.0


@dataclass
class ControlEvalReport:
    settings: ControlEvalSettings
    backend: str
    seeds: list[int] = field(default_factory=list)
    with_control: list[float] = field(default_factory=list)
    without_control: list[float] = field(default_factory=list)
    vae_ceiling: list[float] = field(default_factory=list)
    seconds_per_image: float = 0.0

    @property
    def mean(self) -> float:
        return float(np.mean(self.with_control)) if self.with_control else float("nan")

    def passed(self) -> bool:
        return self.mean >= TARGET_IOU

    def table(self) -> str:
        s = self.settings

        def row(name: str, values: list[float]) -> str:
            if not values:
                return f"| {name} | - | - | - | - |"
            v = np.asarray(values)
            return (f"| {name} | {len(v)} | **{v.mean():.3f}** | {np.median(v):.3f} | "
                    f"{(v >= TARGET_IOU).mean():.0%} |")

        return "\n".join([
            f"size {s.size}, {s.steps} steps, {s.sampler}, CFG {s.cfg}, ControlNet weight {s.weight}, "
            f"edge IoU with {s.tolerance} px dilation, {self.backend}",
            "| run | scenes | mean IoU | median IoU | scenes >= 0.6 |",
            "|---|---|---|---|---|",
            row("with the demo ControlNet", self.with_control),
            row("without ControlNet (same prompts, seeds)", self.without_control),
            row("ceiling: the demo VAE's round trip of the scene", self.vae_ceiling),
            f"seconds per image: {self.seconds_per_image:.2f}; target mean >= {TARGET_IOU}: "
            f"{'met' if self.passed() else 'missed'}",
        ])


# ---------------------------------------------------------------------------------------------
# Scoring


def edge_iou(a: Any, b: Any, tolerance: int = TOLERANCE_PX) -> float:
    """IoU of two edge maps (HxW, nonzero = edge) after dilating each by ``tolerance`` pixels."""
    import cv2

    if tolerance > 0:
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * tolerance + 1, 2 * tolerance + 1))
        a, b = cv2.dilate(np.asarray(a, np.uint8), kernel), cv2.dilate(np.asarray(b, np.uint8), kernel)
    da, db = np.asarray(a) > 0, np.asarray(b) > 0
    union = int((da | db).sum())
    return 1.0 if union == 0 else int((da & db).sum()) / union


def image_edges(image: Any) -> Any:
    """Canny edges of a PIL image (the same canny as the control maps)."""
    return ct.canny(np.asarray(image.convert("RGB"), dtype=np.uint8))


def held_out(n: int, size: int, seed: int = 0) -> list[tuple[ds.Sample, Any]]:
    """``n`` held-out samples with their control edge maps at ``size`` (scenes with none skipped)."""
    found: list[tuple[ds.Sample, Any]] = []
    i = 0
    while len(found) < n:
        sample = ds.make_sample(ct.CONTROL_EVAL_BASE + seed + i)
        i += 1
        _, edges = ct.scene_edges([sample.scene], size)
        if edges[0].any():
            found.append((sample, edges[0]))
    return found


def vae_round_trip_edges(vae: Any, scene: ds.Scene, size: int) -> Any:
    import torch
    from PIL import Image

    x = ds.render([scene], size).to(vae.device, vae.dtype)
    with torch.no_grad():
        rec = vae.decode(vae.encode(x * 2 - 1).latent_dist.mean).sample.float()
    return image_edges(Image.fromarray(ct.to_uint8((rec.cpu() + 1) / 2)[0]))


# ---------------------------------------------------------------------------------------------
# Generation


class Generator(Protocol):
    name: str

    def __call__(self, prompt: str, seed: int, control: Any | None, settings: ControlEvalSettings) -> Any:
        """One image (PIL) of ``prompt``; ``control`` a PIL edge map, or None for no ControlNet."""
        ...


class EngineGenerator:
    """Through sdgate's engine: ``DiffusersEngine.generate`` with a ``ControlNetUnit``."""

    name = "sdgate engine (DiffusersEngine, built-in demo model + control_sdgate_demo_canny)"

    def __init__(self, engine: Any = None, *, data_dir: Path | None = None, models_dir: Path | None = None,
                 model: str = "sdgate-demo-shapes", controlnet: str = ct.CATALOG_NAME,
                 module: str = "none") -> None:
        if engine is None:
            import tempfile

            from sdgate.core.models import ModelCatalog
            from sdgate.engine.diffusers_engine import DiffusersEngine
            from sdgate.settings import Settings

            root = Path(tempfile.mkdtemp(prefix="sdgate-cn-eval-"))
            settings = Settings(data_dir=data_dir or root / "data", models_dir=models_dir or root / "models",
                                device="cpu")
            engine = DiffusersEngine(settings, ModelCatalog(settings))
        self.engine, self.model, self.controlnet, self.module = engine, model, controlnet, module

    def __call__(self, prompt: str, seed: int, control: Any | None, settings: ControlEvalSettings) -> Any:
        from sdgate.core.engine import EngineInputs, NoControl
        from sdgate.core.requests import ControlNetUnit, GenerationRequest

        units = ()
        if control is not None:
            units = (ControlNetUnit(model=self.controlnet, image="control", module=self.module,
                                    weight=settings.weight, processor_res=settings.size),)
        request = GenerationRequest(
            prompt=prompt, model=self.model, width=settings.size, height=settings.size,
            steps=settings.steps, cfg_scale=settings.cfg, sampler=settings.sampler, seed=seed,
            controlnets=units,
        )
        inputs = EngineInputs(control_images=(control,) if control is not None else ())
        return self.engine.generate(request, inputs, NoControl()).images[0].image


class DiffusersGenerator:
    """Straight through diffusers (``StableDiffusionControlNetPipeline``), Euler only: a cross-check."""

    name = "diffusers StableDiffusionControlNetPipeline (cross-check, not the engine)"

    def __init__(self, pipe: Any = None, controlnet: Any = None) -> None:
        from diffusers import StableDiffusionControlNetPipeline

        from sdgate.demo import model as dm

        self.pipe = pipe or dm.load_pipeline()
        self.controlnet = controlnet or ct.load_controlnet()
        self.control_pipe = StableDiffusionControlNetPipeline(
            **{k: v for k, v in self.pipe.components.items() if k != "image_encoder"},
            controlnet=self.controlnet, requires_safety_checker=False)
        self.control_pipe.set_progress_bar_config(disable=True)

    def __call__(self, prompt: str, seed: int, control: Any | None, settings: ControlEvalSettings) -> Any:
        import torch

        g = torch.Generator().manual_seed(seed)
        common = dict(height=settings.size, width=settings.size, num_inference_steps=settings.steps,
                      guidance_scale=settings.cfg, generator=g)
        if control is None:
            return self.pipe(prompt, **common).images[0]
        return self.control_pipe(prompt, image=control, controlnet_conditioning_scale=settings.weight,
                                 **common).images[0]


# ---------------------------------------------------------------------------------------------


def evaluate(generate: Generator, settings: ControlEvalSettings, *, baseline: bool = True,
             vae: Any = None, log: Callable[[str], None] = lambda _: None) -> ControlEvalReport:
    """Score ``settings.n`` held-out scenes with the ControlNet (and, if asked, without, and the
    ceiling of ``vae``)."""
    from PIL import Image

    report = ControlEvalReport(settings, generate.name)
    started, made = time.perf_counter(), 0
    for sample, edges in held_out(settings.n, settings.size, settings.seed):
        control = Image.fromarray(edges).convert("RGB")
        report.seeds.append(sample.seed)
        image = generate(sample.caption, sample.seed, control, settings)
        made += 1
        report.with_control.append(edge_iou(edges, image_edges(image), settings.tolerance))
        if baseline:
            plain = generate(sample.caption, sample.seed, None, settings)
            made += 1
            report.without_control.append(edge_iou(edges, image_edges(plain), settings.tolerance))
        if vae is not None:
            report.vae_ceiling.append(
                edge_iou(edges, vae_round_trip_edges(vae, sample.scene, settings.size), settings.tolerance))
        log(f"seed {sample.seed}: with {report.with_control[-1]:.3f}"
            + (f" without {report.without_control[-1]:.3f}" if baseline else ""))
    report.seconds_per_image = (time.perf_counter() - started) / max(made, 1)
    return report


def sample_sheet(generate: Generator, settings: ControlEvalSettings, n: int = 6) -> Any:
    """A picture: per held-out scene, the control edges, the image with and without ControlNet."""
    from PIL import Image

    rows = []
    for sample, edges in held_out(n, settings.size, settings.seed):
        control = Image.fromarray(edges).convert("RGB")
        with_cn = generate(sample.caption, sample.seed, control, settings)
        without = generate(sample.caption, sample.seed, None, settings)
        rows.append(np.concatenate([np.asarray(control), np.asarray(with_cn.convert("RGB")),
                                    np.asarray(without.convert("RGB"))], axis=1))
    return Image.fromarray(np.concatenate(rows, axis=0))


def scores(values: Sequence[float]) -> str:
    return " ".join(f"{v:.2f}" for v in values)
