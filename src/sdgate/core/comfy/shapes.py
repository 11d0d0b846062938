"""The sizes and batch sizes of the images, masks and latents a graph's nodes make, worked out
from their (validated) inputs without running anything, as ComfyUI's nodes compute them.

A size ComfyUI only learns when the node runs (a loaded image whose size the caller did not give,
an upscale model's factor) is ``None``: the executor bounds it then (``GraphLimits.check_size``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from sdgate.core.comfy.limits import GraphLimits


@dataclass(frozen=True)
class Shape:
    width: int | None  # pixels; None: known only when the node runs
    height: int | None
    batch: int


Upstream = Callable[[str], "Shape | None"]  # the shape a linked input receives (None: not an image)
Problem = tuple[str, str]  # (input name, why)


def infer(
    class_type: str,
    inputs: Mapping[str, Any],
    upstream: Upstream,
    limits: GraphLimits,
    image_sizes: Mapping[str, tuple[int, int]],
) -> tuple[tuple[Shape | None, ...], list[Problem]]:
    """The shape of each output of a node (None for outputs that are not images, masks or latents)
    and what breaks a limit, naming the input that caused it."""
    m = limits.size_multiple
    problems: list[Problem] = []

    def check(name: str, shape: Shape) -> Shape:
        if shape.width is not None and shape.height is not None:
            problem = limits.check_size(shape.width, shape.height)
            if problem:
                problems.append((name, problem))
        problem = limits.check_batch(shape.batch)
        if problem:
            problems.append((name, problem))
        return shape

    if class_type == "EmptyLatentImage":
        shape = Shape(_floor(inputs["width"], m), _floor(inputs["height"], m), inputs["batch_size"])
        return (check("width", shape),), problems
    if class_type in ("LoadImage", "LoadImageMask"):
        size = image_sizes.get(inputs["image"])
        shape = check("image", Shape(size[0], size[1], 1) if size else Shape(None, None, 1))
        return ((shape, shape) if class_type == "LoadImage" else (shape,)), problems
    if class_type in ("VAEEncode", "VAEEncodeForInpaint"):
        src = _need(upstream("pixels"))
        return (check("pixels", Shape(_floor(src.width, m), _floor(src.height, m), src.batch)),), problems
    if class_type in ("SetLatentNoiseMask", "VAEDecode"):
        return (upstream("samples"),), problems
    if class_type in ("KSampler", "KSamplerAdvanced"):
        return (upstream("latent_image"),), problems
    if class_type in ("ImageScale", "LatentUpscale"):
        key = "image" if class_type == "ImageScale" else "samples"
        src = _need(upstream(key))
        width, height = _scaled_to(
            src, inputs["width"], inputs["height"], latent=class_type == "LatentUpscale"
        )
        if class_type == "LatentUpscale":
            width, height = _floor(width, m), _floor(height, m)
        return (check("width", Shape(width, height, src.batch)),), problems
    if class_type == "ImageScaleBy":
        src = _need(upstream("image"))
        scale = inputs["scale_by"]
        shape = Shape(_mul(src.width, scale, 1), _mul(src.height, scale, 1), src.batch)
        return (check("scale_by", shape),), problems
    if class_type == "LatentUpscaleBy":
        src = _need(upstream("samples"))
        scale = inputs["scale_by"]
        return (
            check("scale_by", Shape(_mul(src.width, scale, m), _mul(src.height, scale, m), src.batch)),
        ), problems
    if class_type == "ImageUpscaleWithModel":
        src = _need(upstream("image"))
        return (Shape(None, None, src.batch),), problems
    return (), problems


def _need(shape: Shape | None) -> Shape:
    # Validation only infers shapes once every link type-checked, so an image input carries one.
    return shape if shape is not None else Shape(None, None, 1)


def _floor(value: int | None, multiple: int) -> int | None:
    return None if value is None else value // multiple * multiple


def _mul(value: int | None, scale: float, multiple: int) -> int | None:
    """ComfyUI's ``round(side * scale_by)``, in units of ``multiple`` pixels (latents: the VAE factor)."""
    return None if value is None else round(value // multiple * scale) * multiple


def _scaled_to(src: Shape, width: int, height: int, *, latent: bool) -> tuple[int | None, int | None]:
    """ImageScale / LatentUpscale's target: 0 for one side keeps the aspect ratio, 0 for both keeps
    the size (LatentUpscale keeps at least 64 pixels a side it computes, as ComfyUI does)."""
    if width == 0 and height == 0:
        return src.width, src.height
    least = 64 if latent else 1
    if width == 0:
        height = max(least, height) if latent else height
        if src.width is None or src.height is None or src.height == 0:
            return None, height
        return max(least, round(src.width * height / src.height)), height
    if height == 0:
        width = max(least, width) if latent else width
        if src.width is None or src.height is None or src.width == 0:
            return width, None
        return width, max(least, round(src.height * width / src.width))
    return width, height
