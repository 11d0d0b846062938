"""The diffusers pipelines sdgate runs: the stock ones, minus their fixed multiple-of-8 size check.

``check_inputs`` in diffusers' SD and SDXL pipelines insists that height and width are multiples
of 8 whatever the VAE. sdgate checks sizes against the model's own VAE factor before it calls a
pipeline (a model whose VAE downsamples by 4 takes 36x20), so the stock check is shown the
nearest multiple of 8 instead; every other input check runs unchanged.
"""

from __future__ import annotations

import inspect
from typing import Any

from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline


def _up_to_8(value: Any) -> Any:
    return -(-int(value) // 8) * 8 if isinstance(value, int) else value


class _AnyVaeFactor:
    def check_inputs(self, *args: Any, **kwargs: Any) -> Any:
        parent = super().check_inputs  # type: ignore[misc]
        bound = inspect.signature(parent).bind(*args, **kwargs)
        for name in ("height", "width"):
            if name in bound.arguments:
                bound.arguments[name] = _up_to_8(bound.arguments[name])
        return parent(*bound.args, **bound.kwargs)


class SDPipeline(_AnyVaeFactor, StableDiffusionPipeline):
    """``StableDiffusionPipeline`` for SD 1.x / 2.x checkpoints."""


class SDXLPipeline(_AnyVaeFactor, StableDiffusionXLPipeline):
    """``StableDiffusionXLPipeline`` for SDXL base checkpoints."""


PIPELINES: dict[str, Any] = {
    "StableDiffusionPipeline": SDPipeline,
    "StableDiffusionXLPipeline": SDXLPipeline,
}
