"""What flows along a graph's links. Torch-free: tensors are typed ``Any``.

MODEL, CLIP and VAE are light handles over a model the engine holds loaded (its model cache),
never copies of weights: a LoRA loader returns a new handle with one more entry in its LoRA
stack, and the stack is patched into the weights (``engine.lora``) only while the text encoder or
the UNet of that handle runs. CONTROL_NET is a ``ControlNetHandle`` (a file; the net is fetched
from the engine's ControlNet cache when a sampler runs); a ControlNet apply node adds a
``ControlUse`` to each entry of the conditioning it is given. IMAGE is a ``Pixels``
(``[B, H, W, C]`` in 0..1 on the CPU, as ComfyUI) with the sampling parameters that made it (the
infotext of saved pictures); MASK is a ``[B, H, W]`` tensor, 1 = inpaint. LATENT is a ``Latent``:
samples ``[B, C, h, w]`` or, for an empty latent, only its size (the model's own channels and VAE
factor decide its shape when a sampler first sees it).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any


@dataclass(frozen=True)
class LoraUse:
    """One LoRA of a handle's stack: the file and its strength for this component."""

    name: str  # as the graph named it
    path: str
    strength: float


@dataclass(frozen=True)
class ModelHandle:
    model: Any  # the engine's LoadedModel
    loras: tuple[LoraUse, ...] = ()

    def with_lora(self, lora: LoraUse) -> ModelHandle:
        return replace(self, loras=(*self.loras, lora))


@dataclass(frozen=True)
class ClipHandle:
    model: Any
    loras: tuple[LoraUse, ...] = ()
    clip_skip: int | None = None  # layers skipped (diffusers' count): CLIPSetLastLayer -2 -> 1

    def with_lora(self, lora: LoraUse) -> ClipHandle:
        return replace(self, loras=(*self.loras, lora))


@dataclass(frozen=True)
class VaeHandle:
    model: Any | None  # the checkpoint's own VAE; None for a VAELoader file
    file: Any | None = None  # core.models.AssetFile of a VAELoader


@dataclass(frozen=True)
class UpscaleModel:
    name: str
    model: Any  # a spandrel ImageModelDescriptor


@dataclass(frozen=True)
class ControlNetHandle:
    """A ControlNetLoader's file: the net itself stays in the engine's ControlNet cache and is
    fetched when a sampler runs, so a cached conditioning never holds its weights."""

    name: str  # as the graph named it
    file: Any  # core.models.AssetFile


@dataclass(frozen=True, eq=False)
class ControlUse:
    """One ControlNet on a conditioning entry (ControlNetApply / ControlNetApplyAdvanced): the
    control map as pixels, its strength and the part of the schedule it guides (ComfyUI's percents
    of the model's noise schedule: 0 the noisiest, 1 clean). Compared by identity: Advanced gives
    the same use to the positive and the negative, which then run in one UNet batch."""

    net: ControlNetHandle
    image: Any  # [B, H, W, C] float in 0..1, CPU (an IMAGE's tensor)
    strength: float
    start: float = 0.0
    end: float = 1.0


@dataclass(frozen=True)
class CondEntry:
    """One conditioning: the encoded text, where it applies (ConditioningSetArea) and the
    ControlNets guiding the UNet calls made for it, in the order they were applied."""

    text: str
    embeds: Any  # [1, tokens, width]
    pooled: Any = None  # SDXL's pooled text embedding
    area: tuple[int, int, int, int] | None = None  # (width, height, x, y) in pixels
    strength: float = 1.0
    controls: tuple[ControlUse, ...] = ()


Conditioning = tuple[CondEntry, ...]


@dataclass(frozen=True)
class SampleInfo:
    """The parameters of the sampler that made a latent: the saved pictures' infotext."""

    prompt: str
    negative_prompt: str
    seed: int
    steps: int
    cfg: float
    sampler: str  # our (A1111) name
    schedule: str  # our schedule name
    comfy_sampler: str
    comfy_scheduler: str
    width: int
    height: int
    model_name: str
    model_stem: str
    model_hash: str | None
    denoise: float = 1.0
    loras: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    controlnets: tuple[str, ...] = ()  # A1111's "ControlNet i" values, of the positive's ControlNets


@dataclass(frozen=True)
class Latent:
    width: int  # pixels
    height: int
    batch: int
    samples: Any = None  # [B, C, h, w]; None: an empty latent (zeros once its model is known)
    noise_mask: Any = None  # [B, 1, H, W] or [B, H, W], any size: resized to the latent
    factor: int | None = None  # the VAE factor the samples are in
    info: SampleInfo | None = None


@dataclass(frozen=True)
class Pixels:
    tensor: Any  # [B, H, W, C] float in 0..1, CPU; None in the null engine
    width: int
    height: int
    batch: int
    info: SampleInfo | None = None
    meta: dict[str, Any] = field(default_factory=dict)
