"""``DiffusersEngine``: runs jobs on diffusers pipelines, with a memory-bounded model cache.

One job reads as numbered steps: check the request, get the model (cached or loaded), fill the
model's defaults, then per iteration build a fresh scheduler, draw seeded noise, run the pipeline
with a step callback, decode and write infotexts. The engine runs one job at a time (pipelines and
schedulers hold per-call state); a second worker thread on the same engine waits its turn.

What a job's steps share travels in one ``_Job`` (request, inputs, its control handle, model,
shape, other checkpoints) and each iteration's draw in one ``_Draw``. Per-call pipeline state stays
in the call (``_call_state``): the schedulers a call sets are put back to each model's own after
it, an external VAE and seamless tiling are undone by their blocks, and LoRA weights are set by
every call for itself (``lora.activate`` compares and re-patches; a call that fails restores the
base weights, so a half-applied set never reaches the next call).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from dataclasses import field as dc_field
from typing import Any

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
from sdgate.core.errors import InvalidRequest, ModelNotFound, OutOfMemory
from sdgate.core.models import AssetFile, ModelCatalog, ModelInfo
from sdgate.core.requests import GenerationRequest, Mode
from sdgate.engine import compile as compilation
from sdgate.engine import controlnet_units as controlnets
from sdgate.engine import embeddings, hires, img2img, lora, memory, ngms, previews, restorers, vae
from sdgate.engine import refiner as refiners
from sdgate.engine.cache import ModelCache
from sdgate.engine.common import JobShape, StepTracker, infotext, infotext_params, resolve_shape
from sdgate.engine.configs import UnsupportedCheckpoint
from sdgate.engine.devices import (
    default_cache_budget,
    free_memory,
    is_oom,
    memory_stats,
    resolve_device,
    resolve_dtype,
    vae_dtype,
)
from sdgate.engine.loading import LoadedPipeline, UnsupportedModel, load_pipeline, pipeline_bytes
from sdgate.engine.prompts import prompt_plan, ti_hashes
from sdgate.engine.sampling import (
    StepCallback,
    check_finite,
    decode_latents,
    initial_noise,
    seed_resize_from,
)
from sdgate.engine.schedulers import SchedulerPlan, build_scheduler, eta_kwargs
from sdgate.engine.tiling import seamless
from sdgate.settings import Settings

log = logging.getLogger("sdgate.engine")


@dataclass
class LoadedModel:
    info: ModelInfo  # with its sha256
    loaded: LoadedPipeline
    base_scheduler_config: dict[str, Any]  # as loaded: every job's scheduler starts from this
    variants: dict[str, Any] = dc_field(default_factory=dict)  # e.g. the img2img/inpaint pipeline
    external_vae: vae.ExternalVae | None = None  # while a job decodes with a VAE file (sd_vae)
    base_scheduler: Any = None  # the scheduler it loaded with: what its pipelines hold between calls

    @property
    def pipeline(self) -> Any:
        return self.loaded.pipeline

    def pipelines(self) -> list[Any]:
        """Every pipeline over this model's components: its own, its variants, the hires pass's."""
        own = self.pipeline
        if own is None:  # evicted
            return []
        found = [own, *self.variants.values()]
        hires_variant = hires.existing_img2img_pipeline(own)
        return found if hires_variant is None else [*found, hires_variant]


@dataclass
class _Seconds:
    """The other checkpoints a job samples on: the refiner, the hires pass's model."""

    refiner: refiners.Refiner | None = None
    hires: LoadedModel | None = None


@dataclass
class _Iteration:
    images: list[GeneratedImage]
    action: StepAction
    plan: SchedulerPlan


@dataclass
class _Job:
    """One job of an engine call: what every step of it reads."""

    request: GenerationRequest
    inputs: EngineInputs
    control: GenerationControl  # this job's own handle
    model: LoadedModel
    shape: JobShape
    seconds: _Seconds
    controls: controlnets.JobControls = dc_field(default_factory=controlnets.JobControls)  # ControlNet units


@dataclass
class _Draw:
    """One iteration's draw: the pipeline it samples on, its scheduler, seeds and noise."""

    it: int
    pipe: Any
    plan: SchedulerPlan
    seeds: list[int]
    subseeds: list[int]
    noise: Any
    generators: Any


@contextmanager
def _call_state(models: Sequence[LoadedModel | None]) -> Iterator[None]:
    """Per-call pipeline state does not outlive the call: after it, every pipeline of ``models``
    holds its model's own scheduler again, and after a failure its LoRA weights are the base
    model's (a LoRA set that failed half-way is not left patched in)."""
    held = [m for m in models if m is not None]
    failed = True
    try:
        yield
        failed = False
    finally:
        for model in held:
            for pipe in model.pipelines():
                if model.base_scheduler is not None:
                    pipe.scheduler = model.base_scheduler
            if failed and model.pipeline is not None:
                try:
                    lora.apply_loras(model.pipeline, [])
                except Exception:  # the weights stay marked unknown: the next call restores them
                    log.warning("could not restore %s's base weights", model.info.name, exc_info=True)


class DiffusersEngine:
    name = "diffusers"

    def __init__(self, settings: Settings, catalog: ModelCatalog) -> None:
        self.settings = settings
        self.catalog = catalog
        self.device = resolve_device(settings.device)
        self.dtype = resolve_dtype(self.device, settings.precision)
        budget = settings.model_cache_bytes or default_cache_budget(self.device)
        self.cache: ModelCache[LoadedModel] = ModelCache(budget, on_evict=self._on_evict)
        self.vaes = vae.VaeCache()
        self._lock = threading.Lock()
        self._budget: MemoryBudget | None = None
        self._names: dict[str, str] = {}  # cache key -> the model's name, while it is loaded
        compilation.check_settings(settings)  # a bad --warmup fails here, at start
        _quiet_loading()
        log.info("diffusers engine on %s (%s), model cache %.1f GiB", self.device, self.dtype, budget / 2**30)

    # --- the Engine protocol -------------------------------------------------------------------

    def model_defaults(self, model: str | None) -> ModelDefaults:
        return self._defaults(self.catalog.resolve(model))

    def unload(self) -> None:
        with self._lock:
            self.cache.clear()
            self.vaes.clear()
            free_memory(self.device)

    def memory_budget(self) -> MemoryBudget | None:
        if self._budget is None:
            self._budget = memory.job_budget(self.device, self.dtype)
        return self._budget

    def loaded_models(self) -> list[str]:
        """The models in the cache, most recently used first."""
        names = self._names
        return [names[key] for key in reversed(self.cache.keys_by_age()) if key in names]

    def free_memory_bytes(self) -> int | None:
        """Free CUDA memory; None on other devices."""
        return memory.free_cuda_bytes(self.device) if self.device.type == "cuda" else None

    def memory_stats(self) -> dict[str, Any] | None:
        """The ``cuda`` part of A1111's ``/memory``; None off CUDA."""
        return memory_stats(self.device)

    def preload(self, model: str | None = None) -> str:
        """Loads ``model`` (None: the default) now, compiling and warming it up when ``--compile``
        asks, so the first job does not pay for it; the loaded model's catalog name."""
        info = self.catalog.resolve(model)
        with self._lock:
            return self._get_model(info).info.name

    def batch_rows(self, request: GenerationRequest) -> int:
        """Rows one UNet batch of ``request``'s shape may hold now (``engine.batching``)."""
        from sdgate.engine import batching

        return batching.batch_rows(self, request)

    def generate_batch(self, jobs: Sequence[EngineJob]) -> list[EngineOutput | BaseException]:
        """Compatible jobs as rows of one UNet batch; per job its own outcome (``engine.batching``)."""
        from sdgate.engine import batching

        return batching.generate_batch(self, jobs)

    def generate(
        self, request: GenerationRequest, inputs: EngineInputs, control: GenerationControl
    ) -> EngineOutput:
        # 1. What can run now.
        self.check_request(request)
        if request.mode != Mode.TXT2IMG or inputs.init_images:
            img2img.check_request(request, inputs)
        info = self.catalog.resolve(request.model)
        vae_file = self.catalog.choose_vae(request.vae, info, field="vae")  # before the wait
        refiner_info = self._second_info(request.refiner, info, field="refiner")
        hr_name = request.hires.checkpoint if request.hires is not None else None
        hires_info = self._second_info(hr_name, info, field="hires.checkpoint")
        controlnets.check(self.catalog, request, inputs)  # a missing ControlNet: 404 before the wait
        with self._lock:
            started = time.perf_counter()
            # 2. The model, and its defaults for what the request left out.
            model = self._get_model(info)
            shape = resolve_shape(request, self._defaults(model.info))
            # 3. Sample, iteration by iteration.
            try:
                with _call_state([model]):
                    missing = lora.activate(model.pipeline, self.catalog, request)  # patched in place
                    seconds = self._seconds(request, model, refiner_info, hires_info)
                    controls = controlnets.load(self, request, inputs, model, _job_keys(model, seconds))
                    loaded_at = time.perf_counter()
                    job = _Job(request, inputs, control, model, shape, seconds, controls)
                    out = self._sample(job, vae_file, started, loaded_at)
                    out.notes[:0] = lora.missing_note(missing)  # A1111 warns; info names them
                    return out
            except Exception as exc:
                if not is_oom(exc):
                    raise
            # Outside the except block, so the traceback no longer pins the tensors being freed.
            free_memory(self.device)
            advice = memory.oom_advice(
                self.settings.vram_mode, batch_size=request.batch_size, width=shape.width, height=shape.height
            )
            size = f"{shape.width}x{shape.height}"
            raise OutOfMemory(f"out of memory drawing {request.batch_size} image(s) of {size}: {advice}")

    def _sample(
        self, job: _Job, vae_file: AssetFile | None, started: float, loaded_at: float
    ) -> EngineOutput:
        """The job's iterations with its VAE and tiling in place, and its other checkpoints' state
        undone after it."""
        model, seconds = job.model, job.seconds
        second_models = [seconds.hires, seconds.refiner.model if seconds.refiner else None]
        external = self._external_vae(model, vae_file)
        # The VAE first: tiling then pads the convs that will actually run.
        with (
            _call_state(second_models),
            vae.swapped_in(model.pipeline.vae, external),
            seamless(model.pipeline, job.request.tiling),
        ):
            model.external_vae = external
            try:
                return self._run(job, started, loaded_at)
            finally:
                model.external_vae = None

    # --- steps ---------------------------------------------------------------------------------

    @staticmethod
    def check_request(request: GenerationRequest) -> None:
        """Reject what this engine cannot do yet, rather than quietly doing something else."""
        if request.batch_size < 1 or request.n_iter < 1:
            raise InvalidRequest("batch_size and n_iter must be at least 1", field="batch_size")
        if request.hires is not None:
            if request.mode != Mode.TXT2IMG:
                raise InvalidRequest("hires fix is for txt2img only", field="hires")
            hires.check(request.hires)
        refiners.check(request)

    def _second_info(self, name: str | None, main: ModelInfo, *, field: str) -> ModelInfo | None:
        """A refiner / hires checkpoint by name; None when unset or the main model itself (A1111
        then does not switch)."""
        if name is None or not name.strip():
            return None
        try:
            info = self.catalog.resolve(name)
        except ModelNotFound:
            raise InvalidRequest(f"{field}: model {name!r} not found", field=field) from None
        return None if info.filename == main.filename else info

    def _seconds(
        self,
        request: GenerationRequest,
        model: LoadedModel,
        refiner: ModelInfo | None,
        hires_model: ModelInfo | None,
    ) -> _Seconds:
        """Load the job's other checkpoints beside the main one (never evicting what the job uses)."""
        keep = [str(model.info.filename)]
        loaded: list[LoadedModel | None] = []
        for info in (hires_model, refiner):
            second = None if info is None else self._get_model(info, keep=keep)
            if second is not None:
                keep.append(str(second.info.filename))
                if second.loaded.family == model.loaded.family:
                    lora.activate(second.pipeline, self.catalog, request)  # as A1111 does
                else:
                    lora.apply_loras(second.pipeline, [])  # another family's LoRA cannot apply
            loaded.append(second)
        hires_second, refiner_model = loaded
        assert request.refiner_switch_at is not None or refiner_model is None  # refiners.check
        return _Seconds(
            refiners.Refiner(refiner_model, request.refiner_switch_at or 0.0) if refiner_model else None,
            hires_second,
        )

    def _external_vae(self, model: LoadedModel, file: AssetFile | None) -> vae.ExternalVae | None:
        if file is None:
            return None
        return vae.load_external(self.catalog, self.vaes, file, model.pipeline.vae, self.device)

    def _defaults(self, info: ModelInfo) -> ModelDefaults:
        """The catalog's defaults, corrected by what loading found out (SD 2.x 768-v detection)."""
        defaults = self.catalog.defaults_for(info)
        model = self.cache.get(str(info.filename))
        if model is not None and model.loaded.v_prediction and not info.v_prediction:
            size = model.loaded.native_size
            defaults = replace(defaults, width=size, height=size)
        return defaults

    def _get_model(self, info: ModelInfo, *, keep: list[str] | None = None) -> LoadedModel:
        """The loaded model, from the cache or loaded now; ``keep``: models the job holds already."""
        key = str(info.filename)
        cached = self.cache.get(key)
        if cached is not None:
            return cached
        info = self.catalog.ensure_hash(info)  # A1111 hashes a checkpoint when it loads it
        self.cache.make_room(_file_bytes(info), keep=keep)
        loaded = self._load_with_retry(info, keep or [])
        scheduler = loaded.pipeline.scheduler
        model = LoadedModel(info, loaded, dict(scheduler.config), base_scheduler=scheduler)
        self.cache.put(key, model, pipeline_bytes(loaded.pipeline), keep=keep)
        self._names[key] = info.name  # after put: replacing an entry evicts (and forgets) it first
        return model

    def _load_with_retry(self, info: ModelInfo, keep: list[str]) -> LoadedPipeline:
        """Load; on OOM unload every other model (but ``keep``) and try once more, then give up."""
        for attempt in range(2):
            try:
                return self._load(info)
            except Exception as exc:
                if not is_oom(exc):
                    raise
            free_memory(self.device)  # outside the except block: see generate()
            if attempt == 0:
                log.warning("out of memory loading %s; unloading every other model and retrying", info.name)
                for key in self.cache.keys_by_age():
                    if key not in keep:
                        self.cache.evict(key)
        raise OutOfMemory(f"not enough memory on {self.device} to load model {info.name}")

    def _on_evict(self, key: str, model: LoadedModel) -> None:
        self._names.pop(key, None)
        compilation.release(model.loaded.pipeline)  # its compiled graphs go with it
        model.loaded.pipeline = None  # drop the last reference before returning memory
        free_memory(self.device)

    def _load(self, info: ModelInfo) -> LoadedPipeline:
        log.info(
            "loading %s (%s, %s) on %s", info.name, info.format, info.family or "unknown family", self.device
        )
        try:
            loaded = load_pipeline(
                info,
                device=self.device,
                dtype=self.dtype,
                vae_dtype=vae_dtype(self.device, self.dtype, info.family),
            )
        except (UnsupportedModel, UnsupportedCheckpoint) as exc:
            raise InvalidRequest(f"model {info.name} cannot be loaded: {exc}", field="model") from exc
        if self.device.type == "cuda":  # small GPUs: offload / slicing, from free memory unless set
            size, free = pipeline_bytes(loaded.pipeline), memory.free_cuda_bytes(self.device)
            plan = memory.choose(  # free memory as it was before this model moved in
                self.settings.vram_mode,
                device_type=self.device.type,
                free_bytes=None if free is None else free + size,
                model_bytes=size,
            )
            memory.apply(loaded.pipeline, plan, self.device)
        compilation.prepare(loaded, self.settings, self.device)  # --compile: warms its buckets up
        previews.attach(loaded, self.settings)
        return loaded

    def _run(self, job: _Job, started: float, loaded_at: float) -> EngineOutput:
        request = job.request
        images: list[GeneratedImage] = []
        notes: list[str] = []
        interrupted = False
        plan: SchedulerPlan | None = None
        for it in range(request.n_iter):
            result = self._iteration(job, it)
            plan = result.plan
            for note in plan.notes:
                if note not in notes:
                    log.warning("%s", note)
                    notes.append(note)
            if result.action == StepAction.SKIP:
                continue
            images.extend(result.images)
            if result.action == StepAction.INTERRUPT:
                interrupted = True
                break
        assert plan is not None  # n_iter >= 1
        done = time.perf_counter()
        return EngineOutput(
            images=images,
            model_name=job.model.info.name,
            model_hash=job.model.info.short_hash,
            sampler=request.sampler,
            scheduler=plan.schedule,
            width=job.shape.width,
            height=job.shape.height,
            steps=job.shape.steps,
            interrupted=interrupted,
            notes=notes,
            timings={"load": loaded_at - started, "sample": done - loaded_at, "total": done - started},
        )

    def _draw(self, job: _Job, it: int) -> _Draw:
        """Iteration ``it``'s pipeline, a fresh scheduler on it, and its noise: ``batch_size``
        images with seeds seed + it * batch_size + i."""
        request, model, shape = job.request, job.model, job.shape
        pipe, family = model.pipeline, model.loaded.family
        with_images = bool(job.inputs.init_images)
        if with_images:
            pipe = img2img.variant(model)
        batch = slice(it * request.batch_size, (it + 1) * request.batch_size)
        seeds, subseeds = request.seeds()[batch], request.subseeds()[batch]
        # 1. A fresh scheduler (DPM++ SDE seeds its Brownian noise per image).
        plan = build_scheduler(
            request.sampler,
            request.scheduler,
            model.base_scheduler_config,
            family=family,
            seeds=seeds,
            eta=request.eta,
            s_noise=request.s_noise,
            s_churn=request.s_churn,
            s_tmin=request.s_tmin,
            s_tmax=request.s_tmax,
        )
        pipe.scheduler = plan.scheduler  # put back after the call (_call_state)
        # 2. Noise from each image's own seed, on the CPU.
        factor = model.loaded.vae_scale_factor
        channels = pipe.vae.config.latent_channels if with_images else pipe.unet.config.in_channels
        latent_shape = (channels, shape.height // factor, shape.width // factor)
        noise, generators = initial_noise(
            seeds,
            subseeds,
            request.subseed_strength,
            latent_shape,
            ensd=request.eta_noise_seed_delta,
            resize_from=seed_resize_from(request, factor),
        )
        return _Draw(it, pipe, plan, seeds, subseeds, noise, generators)

    def _iteration(self, job: _Job, it: int) -> _Iteration:
        """One pipeline call (txt2img, with hires fix and the refiner when asked)."""
        draw = self._draw(job, it)
        if job.inputs.init_images:
            with job.controls.applied(draw.pipe, job.shape.width, job.shape.height, job.request.batch_size):
                return self._img2img_iteration(job, draw)
        request, model, shape, seconds = job.request, job.model, job.shape, job.seconds
        pipe, family, plan = draw.pipe, model.loaded.family, draw.plan
        # 3. Sample, reporting every step.
        passes = 2 if request.hires is not None else 1  # progress counts both hires passes, as A1111
        tracker = StepTracker(job.control, passes * it, passes * request.n_iter, shape.steps)
        embeds = embeddings.for_pipeline(self.catalog, pipe)  # textual inversion from embeddings/
        prompts = prompt_plan(pipe, family, request, shape.steps, embeddings=embeds)  # per step, AND
        # A refiner switches in this pass unless hires fix has a second one (A1111: "second pass").
        refiner = seconds.refiner if request.hires is None else None
        first = refiner.first_part(tracker, shape.steps, plan.scheduler.order) if refiner else None
        with (
            prompts.applied(pipe),
            ngms.maybe_skipping_uncond(pipe, request.s_min_uncond, prompts.batch),
            job.controls.applied(pipe, shape.width, shape.height, prompts.batch),
        ):
            latents = pipe(
                **prompts.kwargs,
                height=shape.height,
                width=shape.width,
                num_inference_steps=shape.steps,
                guidance_scale=request.cfg_scale,
                latents=draw.noise.to(device=self.device, dtype=pipe.unet.dtype),
                generator=draw.generators,
                output_type="latent",
                callback_on_step_end=prompts.wrap(StepCallback(refiners.reporting(first, tracker), family)),
                callback_on_step_end_tensor_inputs=prompts.tensor_inputs,
                **eta_kwargs(plan, request.eta),
            ).images
        refined = bool(first and first.switched and tracker.action == StepAction.CONTINUE)
        if refined:
            assert refiner is not None and first is not None
            latents = refiner.continue_sampling(
                first, latents, pipe=pipe, family=family, request=request, prompt_steps=shape.steps,
                width=shape.width, height=shape.height, generators=draw.generators,
                extra=eta_kwargs(plan, request.eta), catalog=self.catalog,
            )  # fmt: skip
            pipe = refiner.pipeline  # the latents are the refiner's now
        if tracker.action == StepAction.SKIP:
            return _Iteration([], tracker.action, plan)
        # 4. Decode, and write each image's infotext.
        check_finite(latents, request.sampler)
        action: StepAction = tracker.action
        extras: dict[str, object] | None = None
        if request.hires is not None and action == StepAction.CONTINUE:
            runs = hires.second_pass_steps(request, shape.steps)[1]
            with job.controls.hires_applied(model, request, shape, seconds.hires):
                second = hires.second_pass(
                    pipe, family, model.base_scheduler_config, request, latents, draw.seeds,
                    width=shape.width, height=shape.height, steps=shape.steps,
                    factor=model.loaded.vae_scale_factor,
                    tracker=StepTracker(job.control, 2 * it + 1, 2 * request.n_iter, max(1, runs)),
                    catalog=self.catalog, subseeds=draw.subseeds, second=seconds.hires,
                    refiner=seconds.refiner,
                )  # fmt: skip
            pictures, action = second.pictures, second.action
            extras = hires.infotext_params(request, seconds.hires)
            extras.update(ti_hashes(prompts.used_embeddings, second.used_embeddings))
            refined = second.refined
        else:
            pictures = decode_latents(pipe, latents)
            extras = prompts.infotext_params() or None
        if refined:
            assert seconds.refiner is not None
            extras = {**(extras or {}), **seconds.refiner.infotext_params()}
        return _Iteration(self._images(job, draw, pictures, extras), action, plan)

    def _img2img_iteration(self, job: _Job, draw: _Draw) -> _Iteration:
        """img2img / inpaint: the same seeds and reports, through ``engine.img2img``."""
        request, model, shape, refiner = job.request, job.model, job.shape, job.seconds.refiner
        pipe, family, plan = draw.pipe, model.loaded.family, draw.plan
        steps = img2img.effective_steps(shape.steps, img2img.strength_of(request, shape.steps))
        tracker = StepTracker(job.control, draw.it, request.n_iter, steps)
        first = refiner.first_part(tracker, steps, plan.scheduler.order) if refiner else None
        embeds = embeddings.for_pipeline(self.catalog, pipe)
        prompts = prompt_plan(pipe, family, request, steps, embeddings=embeds)
        latents, batch = img2img.run(
            pipe,
            request,
            job.inputs,
            prompts=prompts,
            width=shape.width,
            height=shape.height,
            steps=shape.steps,
            noise=draw.noise.to(device=self.device, dtype=pipe.unet.dtype),
            generators=draw.generators,
            tracker=refiners.reporting(first, tracker),
            family=family,
            factor=model.loaded.vae_scale_factor,
            first=draw.it * request.batch_size,
            extra=eta_kwargs(plan, request.eta),
        )
        owner = model.pipeline
        if first is not None and first.switched and tracker.action == StepAction.CONTINUE:
            assert refiner is not None
            # The refiner goes on with its txt2img pipeline: no per-step mask blend in this part
            # (``img2img.finish`` still pastes the original outside the mask).
            latents = refiner.continue_sampling(
                first, latents, pipe=pipe, family=family, request=request, prompt_steps=steps,
                width=shape.width, height=shape.height, generators=draw.generators,
                extra=eta_kwargs(plan, request.eta), catalog=self.catalog,
            )  # fmt: skip
            owner = refiner.pipeline
        if tracker.action == StepAction.SKIP:
            return _Iteration([], tracker.action, plan)
        check_finite(latents, request.sampler)
        pictures = img2img.finish(decode_latents(owner, latents), batch)
        extras = {**img2img.infotext_extras(request, job.inputs, shape.steps), **prompts.infotext_params()}
        if owner is not model.pipeline:
            assert refiner is not None
            extras.update(refiner.infotext_params())
        return _Iteration(self._images(job, draw, pictures, extras), tracker.action, plan)

    def _images(
        self, job: _Job, draw: _Draw, pictures: list[Any], extras: dict[str, object] | None
    ) -> list[GeneratedImage]:
        """One ``GeneratedImage`` per picture (faces restored when asked), with its seeds and infotext."""
        request, restore = job.request, job.request.restore_faces
        pictures, faces = restorers.restore_pictures(pictures, restore, self.catalog, self.device)
        extras = {**(extras or {}), **faces} or None
        return [
            GeneratedImage(
                picture,
                seed,
                subseed,
                self._infotext(job, draw.plan, seed, subseed, extras),
                request.prompt,
                request.negative_prompt,
            )
            for picture, seed, subseed in zip(pictures, draw.seeds, draw.subseeds, strict=True)
        ]

    @staticmethod
    def _infotext(
        job: _Job, plan: SchedulerPlan, seed: int, subseed: int, extras: dict[str, object] | None = None
    ) -> str:
        request, model, shape = job.request, job.model, job.shape
        params = infotext_params(
            request,
            shape,
            seed=seed,
            subseed=subseed,
            schedule_label=plan.schedule_label,
            model_name=model.info.stem,
            model_hash=model.info.short_hash,
            notes=plan.notes,
        )
        if model.external_vae is not None:  # A1111 names the VAE only when a file was loaded
            params.update({"VAE hash": model.external_vae.short_hash, "VAE": model.external_vae.name})
        # A1111's extra_generation_params: the pass's own, LoRA hashes, then the sampler options.
        extras = {
            **(extras or {}),
            **ngms.infotext_params(request.s_min_uncond),
            **job.controls.infotext_params(),
            **lora.infotext_params(model.pipeline),
            **plan.params,
        }
        if extras:  # A1111 writes img2img's parameters before its version
            version = params.pop("Version")
            params = {**params, **extras, "Version": version}
        return infotext(request, params)


def _quiet_loading() -> None:
    """No tqdm bars from from_pretrained in a server's log (process-wide, as both libraries offer)."""
    import diffusers.utils.logging
    import transformers.utils.logging

    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()


def _job_keys(model: LoadedModel, seconds: _Seconds) -> list[str]:
    """The cache keys of the checkpoints a job samples on (none may be evicted while it runs)."""
    others = (seconds.hires, seconds.refiner.model if seconds.refiner else None)
    return [str(m.info.filename) for m in (model, *others) if m is not None]


def _file_bytes(info: ModelInfo) -> int:
    """What loading ``info`` will roughly take: the size of its weight files."""
    path = info.filename
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*.safetensors"))
