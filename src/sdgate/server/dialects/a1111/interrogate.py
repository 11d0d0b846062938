"""``POST /sdapi/v1/interrogate``: a caption for an image, through a pluggable interrogator.

A1111 answers with CLIP (``model: "clip"``) or DeepDanbooru tags (``"deepdanbooru"``). sdgate ships
neither network; it ships the demo model, whose scenes its analyser reads exactly, so with the demo
model current the demo interrogator captions in the demo data set's words (a caption fed back as a
prompt draws the scene again) and "deepdanbooru" gets the same facts as tags. With any other
checkpoint the answer is a 400 naming the interrogator that is not installed, as ``restore_faces``
is refused. A ``CustomInterrogator`` put in ``services.state`` (holding anything with
``caption(image, *, model)``) replaces both.

A1111's errors: no image is a 404 "Image not found", a model other than clip or deepdanbooru a 404
"Model not found"; an image that does not decode is a 400 naming the field (A1111: a 500).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from PIL import Image
from pydantic import BaseModel, Field

from sdgate.core import images as core_images
from sdgate.core.errors import InvalidRequest, NotFound
from sdgate.core.models import ModelInfo
from sdgate.server.deps import image_limits
from sdgate.server.fetch import make_fetcher
from sdgate.server.services import Services

MODELS = {"clip": "CLIP", "deepdanbooru": "DeepDanbooru"}


class InterrogateRequest(BaseModel):
    image: str | None = Field(default="", description="base64, a data: URI, or (when allowed) a URL")
    model: str = Field(default="clip", description="clip or deepdanbooru")


class InterrogateResponse(BaseModel):
    caption: str


class Interrogator(Protocol):
    def caption(self, image: Image.Image, *, model: str) -> str: ...


@dataclass(frozen=True)
class CustomInterrogator:
    """An operator's (or a test's) interrogator, put in ``services.state``."""

    interrogator: Interrogator


class DemoSceneInterrogator:
    """Scenes of the demo model, read by its analyser (numpy and PIL: runs in the server)."""

    def caption(self, image: Image.Image, *, model: str) -> str:
        from sdgate.demo.caption import describe_scene, scene_tags

        return scene_tags(image) if model == "deepdanbooru" else describe_scene(image)


def check_request(body: InterrogateRequest) -> None:
    """A1111's cheap refusals, before any image is decoded."""
    if not body.image:
        raise NotFound("Image not found", field="image")
    if body.model not in MODELS:
        raise NotFound(f"Model not found: '{body.model}' (clip or deepdanbooru)", field="model")


def choose(services: Services, checkpoint: ModelInfo, model: str) -> Interrogator:
    custom = services.state.find(CustomInterrogator)
    if custom is not None:
        return custom.interrogator
    if checkpoint.builtin:
        return DemoSceneInterrogator()
    raise InvalidRequest(
        f"model: the {MODELS[model]} interrogator ('{model}') is not installed; sdgate captions only "
        f"scenes of its demo model, and the current checkpoint is '{checkpoint.title}'",
        field="model",
    )


def interrogate(services: Services, checkpoint: ModelInfo, body: InterrogateRequest) -> dict[str, Any]:
    """Blocking: decode the image (a bad one is a 400 naming ``image``) and caption it."""
    check_request(body)
    interrogator = choose(services, checkpoint, body.model)
    assert body.image is not None
    fetch = make_fetcher(services.settings, "image")
    image = core_images.decode_base64_image(
        body.image, field="image", limits=image_limits(services), fetch_url=fetch
    )
    return {"caption": interrogator.caption(image, model=body.model)}
