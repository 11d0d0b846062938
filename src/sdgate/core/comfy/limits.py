"""How big a ComfyUI graph may be, and the sizes that flow through it.

Every number a graph carries is bounded where it enters (a node's width, steps, batch size, text)
and so is every value derived from it (the size after an upscale node, the images an output node
writes, the steps all samplers run): ``validate`` checks what it can before a job exists. What only
the run knows (a loaded image's size, an upscale model's factor) ``check_size`` lets the executor
bound with the same words.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sdgate.settings import Settings

DEFAULT_MAX_NODES = 500
DEFAULT_MAX_DEPTH = 200


@dataclass(frozen=True)
class GraphLimits:
    max_nodes: int = DEFAULT_MAX_NODES  # nodes in one prompt (all of them, used or not)
    max_depth: int = DEFAULT_MAX_DEPTH  # links from an output node back to a loader
    max_side: int = 4096  # either side of every image and latent (pixels)
    max_pixels: int = 2048 * 2048  # width * height of every image and latent (pixels)
    max_steps: int = 1000  # one sampler's steps
    max_total_steps: int = 1500  # the steps of every sampler of the prompt together
    max_batch_images: int = 64  # one batch, and the images all output nodes write together
    max_prompt_bytes: int = 64 * 1024  # every STRING input (UTF-8)
    max_loras: int = 32  # LoraLoader / LoraLoaderModelOnly nodes of the prompt
    max_controlnets: int = 8  # ControlNetApply / ControlNetApplyAdvanced nodes (each: a net per step)
    size_multiple: int = 8  # the model's VAE factor: latents are width // size_multiple wide

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        *,
        size_multiple: int = 8,
        max_nodes: int = DEFAULT_MAX_NODES,
        max_depth: int = DEFAULT_MAX_DEPTH,
    ) -> GraphLimits:
        return cls(
            max_nodes=max_nodes,
            max_depth=max_depth,
            max_side=settings.max_side,
            max_pixels=settings.max_pixels,
            max_steps=settings.max_steps,
            max_total_steps=settings.max_total_steps,
            max_batch_images=settings.max_batch_images,
            max_prompt_bytes=settings.max_prompt_bytes,
            max_loras=settings.max_loras,
            size_multiple=max(1, size_multiple),
        )

    def input_max(self, name: str) -> int | None:
        """The tighter maximum our settings put on an INT input of this name, if any."""
        if name in ("width", "height", "x", "y"):
            return self.max_side
        if name == "steps":
            return self.max_steps
        if name == "batch_size":
            return self.max_batch_images
        return None

    def check_size(self, width: int, height: int) -> str | None:
        """Why an image or latent of this size (pixels) may not exist, or None when it may."""
        if width < self.size_multiple or height < self.size_multiple:
            least = self.size_multiple
            return f"the size {width}x{height} is below the model's minimum of {least} pixels a side"
        if max(width, height) > self.max_side:
            return f"the size {width}x{height} is over the limit of {self.max_side} pixels a side (max_side)"
        if width * height > self.max_pixels:
            return f"the size {width}x{height} is over the limit of {self.max_pixels} pixels (max_pixels)"
        return None

    def check_batch(self, batch: int) -> str | None:
        if batch > self.max_batch_images:
            return (
                f"a batch of {batch} images is over the limit of {self.max_batch_images} (max_batch_images)"
            )
        return None
