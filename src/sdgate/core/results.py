"""What a finished job holds: references to stored images plus the facts about how they were made."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class StoredImage(BaseModel):
    """One generated image, already in the image store."""

    model_config = ConfigDict(frozen=True)

    id: str
    seed: int
    subseed: int = 0
    width: int
    height: int
    infotext: str
    # The safety checker flagged it: what is stored is a black image of the same size.
    filtered: bool = False


class NodeOutput(BaseModel):
    """What one output node of a graph job produced (ComfyUI's history ``outputs``): its images as
    indices into ``GenerationResult.images``, filed as ``output`` (SaveImage) or ``temp`` (PreviewImage)."""

    model_config = ConfigDict(frozen=True)

    images: tuple[int, ...] = ()
    kind: str = "output"
    filename_prefix: str = "ComfyUI"


class GenerationResult(BaseModel):
    model_config = ConfigDict(frozen=True)

    images: tuple[StoredImage, ...] = ()
    prompts: tuple[str, ...] = ()
    negative_prompts: tuple[str, ...] = ()
    model_name: str = ""
    model_hash: str | None = None
    sampler: str = ""
    scheduler: str = ""
    width: int = 0
    height: int = 0
    steps: int = 0
    # True when the job was interrupted and holds fewer images than asked for.
    interrupted: bool = False
    notes: tuple[str, ...] = ()
    timings: dict[str, float] = Field(default_factory=dict)
    # A graph job (ComfyUI): each output node's images, by index into ``images``; empty otherwise.
    node_outputs: dict[str, NodeOutput] = Field(default_factory=dict)

    @property
    def seeds(self) -> list[int]:
        return [img.seed for img in self.images]

    @property
    def infotexts(self) -> list[str]:
        return [img.infotext for img in self.images]

    @property
    def filtered(self) -> list[int]:
        """Indices of the images the safety checker replaced with black ones."""
        return [i for i, img in enumerate(self.images) if img.filtered]
