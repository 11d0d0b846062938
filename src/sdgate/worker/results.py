"""What a worker reads for a job and makes of its output: the input images the request refers to,
decoded from the image store; the output's pictures as PNGs in the image store; the job's result.

    inputs = load_inputs(images, request)        # EngineInputs, each image decoded
    stored = store_images(images, output)        # one PNG per picture, its infotext in it
    result = build_result(request, output, stored, control, timings)
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING

from sdgate.core.engine import EngineInputs, EngineOutput
from sdgate.core.errors import InvalidRequest, NotFound
from sdgate.core.images import encode_png
from sdgate.core.requests import GenerationRequest, GraphRequest, ImageRef, PostprocessRequest
from sdgate.core.results import GenerationResult, NodeOutput, StoredImage
from sdgate.jobs.images import ImageStore
from sdgate.worker.control import JobControl

if TYPE_CHECKING:
    from PIL.Image import Image

# PNG text chunks a picture's ``info`` may carry into the stored file (ComfyUI's, for graph jobs).
COMFY_PNG_CHUNKS = ("prompt", "workflow")


def load_inputs(images: ImageStore, request: GenerationRequest | PostprocessRequest | GraphRequest
                ) -> EngineInputs:
    """The images ``request`` refers to, decoded. A missing one is ``NotFound`` and one that does not
    decode ``InvalidRequest``, each naming the request's field."""
    refs = request.image_refs()
    if not refs:
        return EngineInputs()
    return EngineInputs.from_refs((ref, open_image(images, ref)) for ref in refs)


def open_image(images: ImageStore, ref: ImageRef) -> Image:
    from PIL import Image as PILImage

    try:
        data = images.get(ref.id)
    except NotFound as exc:
        raise NotFound(exc.message, field=ref.field) from exc
    try:
        image = PILImage.open(io.BytesIO(data))
        image.load()
    except (OSError, ValueError, PILImage.DecompressionBombError) as exc:
        raise InvalidRequest(f"image {ref.id} cannot be decoded: {exc}", field=ref.field) from exc
    return image


def store_images(images: ImageStore, output: EngineOutput, *, with_infotext: bool = True
                 ) -> tuple[StoredImage, ...]:
    """Each picture of ``output`` as a PNG in ``images`` (its infotext in it unless told not to)."""
    stored = []
    for generated in output.images:
        # A graph job's pictures carry ComfyUI's own chunks (the prompt and the workflow JSON).
        comfy = {k: v for k in COMFY_PNG_CHUNKS if isinstance(v := generated.image.info.get(k), str)}
        png = encode_png(generated.image, generated.infotext if with_infotext else None, extra_info=comfy)
        stored.append(
            StoredImage(
                id=images.put(png, content_type="image/png"),
                seed=generated.seed,
                subseed=generated.subseed,
                width=generated.image.width,
                height=generated.image.height,
                infotext=generated.infotext,
                filtered=generated.filtered,
            )
        )
    return tuple(stored)


def build_result(
    request: GenerationRequest | PostprocessRequest | GraphRequest,
    output: EngineOutput,
    stored: tuple[StoredImage, ...],
    control: JobControl,
    timings: dict[str, float],
) -> GenerationResult:
    # Interrupted means "fewer images than asked for": an interrupt on the very last step that still
    # let every image finish is not reported.
    interrupted = output.interrupted or (control.interrupted and len(stored) < request.image_count)
    return GenerationResult(
        images=stored,
        prompts=tuple(g.prompt for g in output.images),
        negative_prompts=tuple(g.negative_prompt for g in output.images),
        model_name=output.model_name,
        model_hash=output.model_hash,
        sampler=output.sampler,
        scheduler=output.scheduler,
        width=output.width,
        height=output.height,
        steps=output.steps,
        interrupted=interrupted,
        notes=tuple(output.notes),
        timings=timings,
        node_outputs={
            node: NodeOutput(images=images.indices, kind=images.kind, filename_prefix=images.filename_prefix)
            for node, images in output.node_outputs.items()
        },
    )
