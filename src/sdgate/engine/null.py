"""An engine that does no work, for benchmarking the server, queue and SDK without a model.

It answers at once with black images of the asked size, real seeds and infotexts, and still asks
``control`` at every step, so skip / interrupt / cancel and progress behave as with a real model.
Torch-free.
"""

from __future__ import annotations

import time

from PIL import Image

from sdgate.core.engine import (
    EngineInputs,
    EngineOutput,
    GeneratedImage,
    GenerationControl,
    MemoryBudget,
    ModelDefaults,
    StepAction,
)
from sdgate.core.errors import ModelNotFound
from sdgate.core.models import DEFAULT_STEPS, ModelCatalog
from sdgate.core.requests import GenerationRequest
from sdgate.engine.common import (
    StepTracker,
    concrete_schedule,
    infotext,
    infotext_params,
    resolve_shape,
    schedule_label,
)
from sdgate.settings import Settings

NULL_MODEL = "null"
NULL_SIZE = 512


class NullEngine:
    name = "null"

    def __init__(self, settings: Settings, catalog: ModelCatalog) -> None:
        self.settings = settings
        self.catalog = catalog

    def model_defaults(self, model: str | None) -> ModelDefaults:
        """The catalog's answer when the model exists; a plain 512x512 model when there is none."""
        try:
            info = self.catalog.resolve(model)
        except ModelNotFound:
            if model is not None:
                raise
            return ModelDefaults(NULL_MODEL, NULL_SIZE, NULL_SIZE, DEFAULT_STEPS, vae_scale_factor=8)
        return self.catalog.defaults_for(info)

    def unload(self) -> None:
        pass

    def memory_budget(self) -> MemoryBudget | None:
        """None: the null engine draws nothing, so no job is refused for its memory."""
        return None

    def loaded_models(self) -> list[str]:
        """Its default model, "loaded" from the start (it loads nothing)."""
        return [self.model_defaults(None).name]

    def free_memory_bytes(self) -> int | None:
        return None

    def generate(
        self, request: GenerationRequest, inputs: EngineInputs, control: GenerationControl
    ) -> EngineOutput:
        started = time.perf_counter()
        defaults = self.model_defaults(request.model)
        shape = resolve_shape(request, defaults)
        seeds, subseeds = request.seeds(), request.subseeds()
        schedule = concrete_schedule(request.sampler, request.scheduler)
        images: list[GeneratedImage] = []
        interrupted = False
        for it in range(request.n_iter):
            tracker = StepTracker(control, it, request.n_iter, shape.steps)
            for done in range(1, shape.steps + 1):
                if tracker.advance(done, shape.steps) != StepAction.CONTINUE:
                    break
            if tracker.action == StepAction.SKIP:
                continue
            for i in range(it * request.batch_size, (it + 1) * request.batch_size):
                params = infotext_params(
                    request,
                    shape,
                    seed=seeds[i],
                    subseed=subseeds[i],
                    schedule_label=schedule_label(schedule),
                    model_name=defaults.name,
                    model_hash=None,
                )
                images.append(
                    GeneratedImage(
                        image=Image.new("RGB", (shape.width, shape.height)),
                        seed=seeds[i],
                        subseed=subseeds[i],
                        infotext=infotext(request, params),
                        prompt=request.prompt,
                        negative_prompt=request.negative_prompt,
                    )
                )
            if tracker.action == StepAction.INTERRUPT:
                interrupted = True
                break
        return EngineOutput(
            images=images,
            model_name=defaults.name,
            model_hash=None,
            sampler=request.sampler,
            scheduler=schedule,
            width=shape.width,
            height=shape.height,
            steps=shape.steps,
            interrupted=interrupted,
            timings={"total": time.perf_counter() - started},
        )
