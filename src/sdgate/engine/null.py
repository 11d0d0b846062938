"""An engine that does no work, for benchmarking the server, queue and SDK without a model.

It answers at once with black images of the asked size, real seeds and infotexts, and still asks
``control`` at every step, so skip / interrupt / cancel and progress behave as with a real model.
Torch-free.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from PIL import Image

from sdgate.core.engine import (
    EngineInputs,
    EngineJob,
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
from sdgate.engine.batching import JobRows
from sdgate.engine.common import (
    JobShape,
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
# Rows of a "batch" when ``batch_max`` is not set: 1, off, as on any CPU (a lone job never waits for
# mates it gains nothing from); benchmarks and worker tests batch by setting ``batch_max``.
NULL_BATCH_ROWS = 1


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

    def batch_rows(self, request: GenerationRequest) -> int:
        """``batch_max``, or ``NULL_BATCH_ROWS`` (off): benchmarks and worker tests batch without a
        model by setting ``batch_max``."""
        return self.settings.batch_max or NULL_BATCH_ROWS

    def generate(
        self, request: GenerationRequest, inputs: EngineInputs, control: GenerationControl
    ) -> EngineOutput:
        started = time.perf_counter()
        defaults = self.model_defaults(request.model)
        shape = resolve_shape(request, defaults)
        images: list[GeneratedImage] = []
        interrupted = False
        for it in range(request.n_iter):
            tracker = StepTracker(control, it, request.n_iter, shape.steps)
            for done in range(1, shape.steps + 1):
                if tracker.advance(done, shape.steps) != StepAction.CONTINUE:
                    break
            if tracker.action == StepAction.SKIP:
                continue
            images.extend(self._images(request, defaults, shape, it))
            if tracker.action == StepAction.INTERRUPT:
                interrupted = True
                break
        return self._output(request, defaults, shape, images, interrupted, started)

    def generate_batch(self, jobs: Sequence[EngineJob]) -> list[EngineOutput | BaseException]:
        """The jobs as one batch, with the diffusers engine's batch semantics (``engine.batching``):
        all of a job's iterations side by side, one report per step, each job's control its own."""
        started = time.perf_counter()
        outcomes: list[EngineOutput | BaseException | None] = [None] * len(jobs)
        running: dict[int, tuple[ModelDefaults, JobShape, JobRows]] = {}
        for index, job in enumerate(jobs):
            try:
                defaults = self.model_defaults(job.request.model)
                shape = resolve_shape(job.request, defaults)
            except Exception as exc:  # this job's own failure
                outcomes[index] = exc
                continue
            running[index] = (defaults, shape, JobRows(job.control, job.request.n_iter, shape.steps))
        longest = max((shape.steps for _, shape, _ in running.values()), default=0)
        for done in range(1, longest + 1):
            for _, shape, rows in running.values():
                rows.advance(min(done, shape.steps), shape.steps)
            if not any(rows.running for _, _, rows in running.values()):
                break
        for index, (defaults, shape, rows) in running.items():
            request = jobs[index].request
            error = rows.outcome_error()
            if error is not None:
                outcomes[index] = error
                continue
            images = [image for it in rows.live for image in self._images(request, defaults, shape, it)]
            outcomes[index] = self._output(request, defaults, shape, images, rows.interrupted, started)
        return [outcome for outcome in outcomes if outcome is not None]

    @staticmethod
    def _images(
        request: GenerationRequest, defaults: ModelDefaults, shape: JobShape, it: int
    ) -> list[GeneratedImage]:
        """Iteration ``it``'s blank images with their seeds and infotexts."""
        seeds, subseeds = request.seeds(), request.subseeds()
        label = schedule_label(concrete_schedule(request.sampler, request.scheduler))
        images = []
        for i in range(it * request.batch_size, (it + 1) * request.batch_size):
            params = infotext_params(
                request,
                shape,
                seed=seeds[i],
                subseed=subseeds[i],
                schedule_label=label,
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
        return images

    @staticmethod
    def _output(
        request: GenerationRequest,
        defaults: ModelDefaults,
        shape: JobShape,
        images: list[GeneratedImage],
        interrupted: bool,
        started: float,
    ) -> EngineOutput:
        return EngineOutput(
            images=images,
            model_name=defaults.name,
            model_hash=None,
            sampler=request.sampler,
            scheduler=concrete_schedule(request.sampler, request.scheduler),
            width=shape.width,
            height=shape.height,
            steps=shape.steps,
            interrupted=interrupted,
            timings={"total": time.perf_counter() - started},
        )
