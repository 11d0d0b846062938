"""What a request will really draw, worked out without torch: every pass's size and steps, and an
estimate of the memory one job needs. ``server.validation.check_request`` bounds these.

The hires arithmetic is A1111's (``hr_upscale_to_x/y`` and the crop) and must agree with the
engine's (``engine.hires.target_size``; a test holds them together).

The memory estimate is deliberately coarse: the model's weights (its files' size) plus, per image
of a batch, the activations of the largest pass, proportional to its pixels. It is there to refuse
what cannot fit (a batch of 64 at 2048x2048 on a 24 GiB card, a 65536x65536 hires fix on a CPU)
before it takes a process down, not to predict a peak to the megabyte: the engine's own
out-of-memory handling still covers what slips under it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sdgate.core.engine import ModelDefaults
from sdgate.core.requests import GenerationRequest, HiresSettings

# Activation bytes per output pixel and image at 2 bytes per value (fp16 / bf16), at the peak of a
# pass: the UNet's feature maps for cond + uncond at 1/factor² of the pixels and the VAE decoder's
# full-resolution ones (its last up block holds 128 channels per pixel; with the attention, norms
# and upsampling copies alive at once, some 3 KB). Published peaks agree within a factor of two:
# SD 1.5 at 512x512 ~0.8 GB over its weights, SDXL at 1024x1024 ~3 GB over its weights.
ACTIVATION_BYTES_PER_PIXEL: dict[str | None, int] = {"sd1": 3 * 1024, "sd2": 3 * 1024, "sdxl": 3 * 1024}
DEFAULT_ACTIVATION_BYTES_PER_PIXEL = 3 * 1024  # a model of unknown family


@dataclass(frozen=True)
class Size:
    width: int
    height: int

    @property
    def pixels(self) -> int:
        return self.width * self.height

    def __str__(self) -> str:
        return f"{self.width}x{self.height}"


@dataclass(frozen=True)
class HiresSize:
    upscale: Size  # what the upscale produces, before the crop to the asked aspect ratio
    final: Size  # what the second pass draws and the job returns


@dataclass(frozen=True)
class Passes:
    """What a job runs once the model's defaults filled the gaps."""

    first: Size
    steps: int  # of the first pass
    hires: HiresSize | None = None
    hires_steps: int = 0  # asked of the second pass (0 when there is none)

    @property
    def largest(self) -> Size:
        sizes = [self.first] if self.hires is None else [self.first, self.hires.upscale, self.hires.final]
        return max(sizes, key=lambda s: s.pixels)

    @property
    def total_steps(self) -> int:
        return self.steps + self.hires_steps


def hires_size(first: Size, hires: HiresSettings, factor: int) -> HiresSize:
    """A1111's hires target: ``scale`` times the first pass, or ``resize_x/y`` (one side alone keeps
    the aspect ratio; both crop to fill), each rounded down to a multiple of ``factor``. The values
    must be finite (``check_request`` sees to it); a result may be 0 or huge, for the caller to bound."""
    width, height = first.width, first.height
    rx, ry = hires.resize_x, hires.resize_y
    if rx <= 0 and ry <= 0:
        w, h = int(width * hires.scale), int(height * hires.scale)
        target_w, target_h = w, h
    elif rx <= 0:
        w, h = ry * width // height, ry
        target_w, target_h = w, h
    elif ry <= 0:
        w, h = rx, rx * height // width
        target_w, target_h = w, h
    else:
        target_w, target_h = rx, ry
        if width / height < rx / ry:
            w, h = rx, rx * height // width
        else:
            w, h = ry * width // height, ry
    uw, uh, fw, fh = (v // factor * factor for v in (w, h, target_w, target_h))
    return HiresSize(upscale=Size(uw, uh), final=Size(fw, fh))


def passes(request: GenerationRequest, defaults: ModelDefaults) -> Passes:
    """Every pass of ``request`` on a model with ``defaults`` (sizes not yet checked)."""
    first = Size(request.width or defaults.width, request.height or defaults.height)
    steps = request.steps or defaults.steps
    if request.hires is None or first.width <= 0 or first.height <= 0:
        return Passes(first, steps)
    hires = hires_size(first, request.hires, defaults.vae_scale_factor)
    return Passes(first, steps, hires, request.hires.second_pass_steps or steps)


def weights_bytes(path: Path | None) -> int:
    """The weights a model brings onto the device: the size of its files (0 when unknown)."""
    if path is None:
        return 0
    try:
        if path.is_file():
            return path.stat().st_size
        return sum(f.stat().st_size for f in path.rglob("*") if f.suffix in (".safetensors", ".bin", ".ckpt"))
    except OSError:
        return 0


def estimate_job_memory(
    request: GenerationRequest,
    shape: Passes,
    *,
    family: str | None,
    weights: int,
    value_bytes: int = 2,
) -> int:
    """Bytes one job needs at its peak: ``weights`` plus the activations of the largest pass for
    each image of a batch (``n_iter`` runs one batch after another), at ``value_bytes`` per value."""
    per_pixel = ACTIVATION_BYTES_PER_PIXEL.get(family, DEFAULT_ACTIVATION_BYTES_PER_PIXEL)
    activations = shape.largest.pixels * request.batch_size * per_pixel * value_bytes // 2
    return weights + activations
