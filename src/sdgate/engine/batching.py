"""Cross-request batching (issue 17): compatible jobs' images as rows of one UNet batch.

``generate_batch(engine, jobs)`` is ``DiffusersEngine.generate_batch``. It reads as numbered steps:

1. Each job alone: ``check_request``, its model and VAE resolved; a job that fails gets its
   exception as its outcome, and its mates go on. A job that can never share a batch (its
   ``batch_key`` is None) runs through ``generate``.
2. Jobs on the same model file and VAE are grouped; under the engine's lock the model is loaded,
   each job's size and steps are filled from the model's defaults, and the jobs are split by their
   run-time key (``core.batching.batch_key`` of the filled request: the same sampler, schedule, LoRA
   set, ...). A job whose key is None, or that is alone in its group, runs through ``generate``.
3. Per group: the LoRA set is activated once (as a single call does), each job's prompts are
   encoded by the very path a single call takes (``prompt_plan``: textual inversions, clip skip,
   attention weights), and the jobs are split once more by the token length of their embeddings
   (padding a prompt with more chunks would change its image) and, for a UNet with a guidance
   embedding (LCM), by CFG scale.
4. Per sub-batch: one fresh scheduler, one pipeline call. Job j contributes ``batch_size * n_iter``
   rows; row r has its own seed (``request.seeds()``), its own initial noise and generator exactly
   as ``initial_noise`` draws them alone, and its own prompt and negative embeddings. The stock
   pipeline applies one scalar guidance scale, so a UNet forward hook (``_per_row_guidance``) does
   the guidance per job, ``uncond + cfg_j * (cond - uncond)`` on its rows with the same float
   arithmetic as alone, and hands the pipeline that result as both halves: the pipeline's own
   ``u + g * (c - u)`` then returns it exactly. Every sampler here steps rows independently (the
   ancestral and SDE noise comes from each row's own generator or Brownian tree), so a row's
   latents equal the job's alone up to how batched kernels round.
5. Per job: its rows decoded in its own iterations' chunks (as alone), with the infotext, notes and
   LoRA notes a single call writes.

Tolerance: a job's image equals the one it gives alone within 2/255 per channel (the tests assert
``max |batched - alone| <= 2`` on 8-bit pixels; on the CPU it is 0 or 1). Only the UNet's batched
matrix kernels differ from alone; noise, guidance and scheduler arithmetic are the same per element.

Control, per job (``JobRows``): a job's iterations run side by side, so it reports one pass,
``StepReport(iteration=0, iterations=1, step, steps)``: its fraction done, once per step. CANCEL
ends the job with ``JobCancelled``; INTERRUPT keeps its rows as they are at that step (A1111 decodes
the current latents) and returns them with ``interrupted=True``; SKIP drops its lowest iteration
still drawn (A1111 skips the current one and goes on) and the job keeps reporting while it has rows.
A dropped job's rows are not sliced out of the batch (multistep schedulers keep past outputs per
row): they go on being computed and are discarded, so its mates' arithmetic is untouched; the loop
stops early only when no job has rows left.

Failures: one job's bad input fails that job alone (step 1, a failed shape, a failed prompt
encoding, NaNs in its own rows). A failure of the shared call (out of memory, or anything that
cannot be told apart per job) runs each job of that group still without an outcome alone through
``generate``, so each still gets its own output or exception; ``generate_batch`` itself never raises
for a job's sake.

``batch_rows``: 1 on a CPU unless ``settings.batch_max`` says otherwise; on CUDA, the rows that fit
in the free memory at ``core.limits``' activation estimate for the request's size (the model's
weights counted when it is not loaded yet), at most ``batch_max`` or ``AUTO_MAX_ROWS``.

This module imports no torch at import time: ``JobRows`` is shared with the null engine.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sdgate.core.batching import batch_key
from sdgate.core.engine import EngineJob, EngineOutput, GenerationControl, StepAction, StepReport
from sdgate.core.errors import JobCancelled
from sdgate.core.limits import ACTIVATION_BYTES_PER_PIXEL, DEFAULT_ACTIVATION_BYTES_PER_PIXEL
from sdgate.core.requests import GenerationRequest

if TYPE_CHECKING:
    from PIL.Image import Image

    from sdgate.core.models import AssetFile, ModelInfo
    from sdgate.engine.common import JobShape
    from sdgate.engine.diffusers_engine import DiffusersEngine, LoadedModel
    from sdgate.engine.prompts import PromptPlan

log = logging.getLogger("sdgate.engine")

AUTO_MAX_ROWS = 32  # rows of one batch when ``batch_max`` is not set (CUDA)
FREE_MEMORY_SHARE = 0.85  # of the free memory a batch's activations may plan on

Outcome = EngineOutput | BaseException


# --- per-job control (torch-free; the null engine shares it) ------------------------------------


class JobRows:
    """One job's part of a batch: which of its iterations are still drawn, and what its control said.

    ``advance(done, total)`` turns the loop's progress into this job's steps 1..``steps`` (once each,
    as ``StepTracker``) and asks the job's control; see the module doc for what each answer does.
    """

    def __init__(self, control: GenerationControl, iterations: int, steps: int) -> None:
        self.control = control
        self.steps = steps
        self.live = list(range(iterations))  # iterations still drawn, lowest first
        self.stopped: StepAction | None = None  # INTERRUPT or CANCEL
        self.error: BaseException | None = None  # the control itself failed
        self._reported = 0

    @property
    def running(self) -> bool:
        return bool(self.live) and self.stopped is None and self.error is None

    @property
    def interrupted(self) -> bool:
        return self.stopped == StepAction.INTERRUPT

    @property
    def cancelled(self) -> bool:
        return self.stopped == StepAction.CANCEL

    def advance(self, done: int, total: int, preview: Callable[[], Image] | None = None) -> StepAction:
        """``done`` of ``total`` loop iterations are finished; returns what the control said."""
        step = min(self.steps, -(-done * self.steps // max(1, total)))  # ceil
        if not self.running or step <= self._reported:
            return StepAction.CONTINUE
        self._reported = step
        try:
            action = self.control.on_step(StepReport(0, 1, step, self.steps, preview))
        except Exception as exc:  # this job's handle failed: this job fails, not its mates
            self.error = exc
            return StepAction.CANCEL
        if action == StepAction.SKIP:
            self.live.pop(0)
        elif action in (StepAction.INTERRUPT, StepAction.CANCEL):
            self.stopped = action
        return action

    def outcome_error(self) -> BaseException | None:
        """What ends the job without images: its control's failure, or a cancel."""
        if self.error is not None:
            return self.error
        return JobCancelled("the job was cancelled") if self.cancelled else None


# --- how many rows ------------------------------------------------------------------------------


def batch_rows(engine: DiffusersEngine, request: GenerationRequest) -> int:
    """Rows one batch of ``request``'s shape may hold now (see the module doc). Cheap: no loading."""
    limit = engine.settings.batch_max
    if engine.device.type != "cuda":
        return limit or 1
    free = engine.free_memory_bytes()
    try:
        info = engine.catalog.resolve(request.model)
    except Exception:  # an unknown model runs alone and fails there
        return 1
    if free is None:
        return limit or 1
    if str(info.filename) not in engine.cache.keys_by_age():
        free -= _weights_bytes(info)
    defaults = engine.catalog.defaults_for(info)
    pixels = (request.width or defaults.width) * (request.height or defaults.height)
    per_pixel = ACTIVATION_BYTES_PER_PIXEL.get(info.family, DEFAULT_ACTIVATION_BYTES_PER_PIXEL)
    value_bytes = int(getattr(engine.dtype, "itemsize", 2))
    per_row = max(1, pixels * per_pixel * value_bytes // 2)
    fits = int(free * FREE_MEMORY_SHARE) // per_row
    return max(1, min(limit or AUTO_MAX_ROWS, fits))


def _weights_bytes(info: ModelInfo) -> int:
    path = info.filename
    try:
        if path.is_file():
            return path.stat().st_size
        return sum(f.stat().st_size for f in path.rglob("*.safetensors"))
    except OSError:
        return 0


# --- the diffusers engine -----------------------------------------------------------------------


@dataclass
class _Entry:
    """A job that passed its own checks: its place in the call, its model, VAE and (once the model
    is loaded) its size and steps."""

    index: int
    job: EngineJob
    info: ModelInfo
    vae_file: AssetFile | None
    shape: JobShape | None = None

    @property
    def request(self) -> GenerationRequest:
        return self.job.request


@dataclass
class _Member:
    """A job of one sub-batch: its encoded prompts, its rows and what its control said."""

    entry: _Entry
    prompts: PromptPlan
    rows: JobRows
    first_row: int = 0
    snapshot: Any = None  # its rows' latents when it was interrupted

    @property
    def request(self) -> GenerationRequest:
        return self.entry.job.request

    @property
    def stop_row(self) -> int:
        return self.first_row + self.request.image_count


@dataclass
class _Group:
    """What every sub-batch of one LoRA-activated group shares."""

    engine: DiffusersEngine
    model: LoadedModel
    shape: JobShape
    started: float
    loaded_at: float
    missing_loras: list[str]
    outcomes: list[Outcome | None]


def generate_batch(engine: DiffusersEngine, jobs: Sequence[EngineJob]) -> list[Outcome]:
    """``jobs`` as rows of UNet batches where they can share one, else alone; per job, in order, its
    output or the exception that failed it alone (see the module doc)."""
    outcomes: list[Outcome | None] = [None] * len(jobs)
    singles: list[tuple[int, EngineJob]] = []  # what runs as a single call
    # 1. Each job's own checks.
    by_model: dict[tuple[str, str | None], list[_Entry]] = {}
    for index, job in enumerate(jobs):
        if batch_key(job.request) is None:  # never batched (img2img, hires fix, a graph, ...)
            singles.append((index, job))
            continue
        try:
            entry = _check(engine, index, job)
        except Exception as exc:  # this job's bad input; its mates go on
            outcomes[index] = exc
            continue
        vae_path = None if entry.vae_file is None else str(entry.vae_file.path)
        by_model.setdefault((str(entry.info.filename), vae_path), []).append(entry)
    # 2-5. Per model and VAE: batches, under the engine's lock.
    for entries in by_model.values():
        singles.extend((entry.index, entry.job) for entry in _run_model(engine, entries, outcomes))
    # What cannot share a batch runs as a single call, after the lock is released.
    for index, job in sorted(singles, key=lambda single: single[0]):
        try:
            outcomes[index] = engine.generate(job.request, job.inputs, job.control)
        except Exception as exc:
            outcomes[index] = exc
    return [RuntimeError("the job was not run") if o is None else o for o in outcomes]


def _check(engine: DiffusersEngine, index: int, job: EngineJob) -> _Entry:
    request = job.request
    engine.check_request(request)
    info = engine.catalog.resolve(request.model)
    vae_file = engine.catalog.choose_vae(request.vae, info, field="vae")
    return _Entry(index, job, info, vae_file)


def _runtime_key(entry: _Entry) -> str | None:
    """``batch_key`` of the request as it will run: resolved model and VAE, size and steps filled."""
    assert entry.shape is not None
    filled = entry.request.model_copy(
        update={
            "model": str(entry.info.filename),
            "vae": None if entry.vae_file is None else str(entry.vae_file.path),
            "width": entry.shape.width,
            "height": entry.shape.height,
            "steps": entry.shape.steps,
        }
    )
    return batch_key(filled)


def _run_model(
    engine: DiffusersEngine, entries: list[_Entry], outcomes: list[Outcome | None]
) -> list[_Entry]:
    """The jobs on one model and VAE; returns those that must run alone."""
    if len(entries) < 2:
        return entries
    from sdgate.engine.common import resolve_shape

    alone: list[_Entry] = []
    with engine._lock:
        started = time.perf_counter()
        try:
            model = engine._get_model(entries[0].info)
        except Exception as exc:  # the model fails every job on it, as it would alone
            for entry in entries:
                outcomes[entry.index] = exc
            return []
        defaults = engine._defaults(model.info)
        keyed: dict[str, list[_Entry]] = {}
        for entry in entries:
            try:
                entry.shape = resolve_shape(entry.request, defaults)
            except Exception as exc:
                outcomes[entry.index] = exc
                continue
            key = _runtime_key(entry)
            if key is None:
                alone.append(entry)
            else:
                keyed.setdefault(key, []).append(entry)
        for group in keyed.values():
            if len(group) < 2:
                alone.extend(group)
            else:
                alone.extend(_run_group(engine, model, group, started, outcomes))
    return alone


def _run_group(
    engine: DiffusersEngine,
    model: LoadedModel,
    entries: list[_Entry],
    started: float,
    outcomes: list[Outcome | None],
) -> list[_Entry]:
    """Jobs with one run-time key: their LoRA set, VAE and tiling in place once; returns those that
    must run alone (all without an outcome when the shared call failed)."""
    from sdgate.engine import lora, vae
    from sdgate.engine.devices import free_memory, is_oom
    from sdgate.engine.diffusers_engine import _call_state
    from sdgate.engine.tiling import seamless

    first = entries[0]
    assert first.shape is not None
    oom = False
    try:
        with _call_state([model]):
            missing = lora.activate(model.pipeline, engine.catalog, first.request)  # the same set for all
            loaded_at = time.perf_counter()
            external = engine._external_vae(model, first.vae_file)
            with vae.swapped_in(model.pipeline.vae, external), seamless(model.pipeline, first.request.tiling):
                model.external_vae = external
                try:
                    group = _Group(engine, model, first.shape, started, loaded_at, missing, outcomes)
                    return _run_encoded(group, entries)
                finally:
                    model.external_vae = None
    except Exception as exc:
        oom = is_oom(exc)
        if not oom:
            log.warning("a batch of %d jobs failed; running each alone", len(entries), exc_info=True)
    if oom:  # outside the except block, so the traceback no longer pins the tensors being freed
        log.warning("out of memory in a batch of %d jobs; running each alone", len(entries))
        free_memory(engine.device)
    return [entry for entry in entries if outcomes[entry.index] is None]


def _run_encoded(group: _Group, entries: list[_Entry]) -> list[_Entry]:
    """Encode each job's prompts as alone, split by token length (and CFG for a UNet with a guidance
    embedding), and draw each sub-batch; returns the jobs whose prompts need a single call."""
    from sdgate.engine import embeddings
    from sdgate.engine.prompts import prompt_plan

    pipe, family, steps = group.model.pipeline, group.model.loaded.family, group.shape.steps
    guidance_embedding = pipe.unet.config.get("time_cond_proj_dim") is not None
    found = embeddings.for_pipeline(group.engine.catalog, pipe)
    subs: dict[tuple[int, float | None], list[_Member]] = {}
    alone: list[_Entry] = []
    for entry in entries:
        try:
            prompts = prompt_plan(pipe, family, entry.request, steps, embeddings=found)
        except Exception as exc:
            group.outcomes[entry.index] = exc
            continue
        if prompts.scheduled or prompts.composable:  # batch_key rules these out; never batch them
            alone.append(entry)
            continue
        length = prompts.schedule[0].parts[0].embeds.shape[1]
        key = (length, entry.request.cfg_scale if guidance_embedding else None)
        rows = JobRows(entry.job.control, entry.request.n_iter, steps)
        subs.setdefault(key, []).append(_Member(entry, prompts, rows))
    for members in subs.values():
        _draw(group, members)
    return alone


def _draw(group: _Group, members: list[_Member]) -> None:
    """One pipeline call over every member's rows; sets each member's outcome."""
    from sdgate.engine.sampling import initial_noise
    from sdgate.engine.schedulers import build_scheduler, eta_kwargs

    engine, model, shape = group.engine, group.model, group.shape
    pipe, family = model.pipeline, model.loaded.family
    first = members[0].request
    # 1. Each row's seed, noise and generator, as alone.
    factor = model.loaded.vae_scale_factor
    latent_shape = (pipe.unet.config.in_channels, shape.height // factor, shape.width // factor)
    seeds: list[int] = []
    noises, generators = [], []
    for member in members:
        request = member.request
        member.first_row = len(seeds)
        noise, gens = initial_noise(
            request.seeds(), request.subseeds(), request.subseed_strength, latent_shape,
            ensd=request.eta_noise_seed_delta,
        )  # fmt: skip
        seeds += request.seeds()
        noises.append(noise)
        generators += gens
    # 2. A fresh scheduler for the batch (DPM++ SDE: one Brownian tree per row's seed).
    plan = build_scheduler(
        first.sampler, first.scheduler, model.base_scheduler_config, family=family, seeds=seeds,
        eta=first.eta, s_noise=first.s_noise, s_churn=first.s_churn, s_tmin=first.s_tmin, s_tmax=first.s_tmax,
    )  # fmt: skip
    for note in dict.fromkeys(plan.notes):
        log.warning("%s", note)
    pipe.scheduler = plan.scheduler  # put back after the call (_call_state)
    log.info("batch of %d jobs, %d rows of %dx%d", len(members), len(seeds), shape.width, shape.height)
    # 3. Sample every row, reporting each job's steps.
    guided = first.cfg_scale > 1.0 and pipe.unet.config.get("time_cond_proj_dim") is None
    spans = [(slice(m.first_row, m.stop_row), m.request.cfg_scale) for m in members]
    with _per_row_guidance(pipe.unet, spans, enabled=guided):
        latents = pipe(
            **_prompt_rows(members, family == "sdxl"),
            height=shape.height,
            width=shape.width,
            num_inference_steps=shape.steps,
            guidance_scale=first.cfg_scale,
            latents=_cat(noises).to(device=engine.device, dtype=pipe.unet.dtype),
            generator=generators,
            output_type="latent",
            callback_on_step_end=_StepEnd(members, family),
            callback_on_step_end_tensor_inputs=["latents"],
            **eta_kwargs(plan, first.eta),
        ).images
    # 4. Each job's images, decoded as alone.
    for member in members:
        group.outcomes[member.entry.index] = _finish(group, member, plan, latents)


def _cat(tensors: list[Any]) -> Any:
    import torch

    return torch.cat(tensors)


def _prompt_rows(members: list[_Member], sdxl: bool) -> dict[str, Any]:
    """The pipeline's prompt arguments: each row its own job's embeddings (padded as alone)."""

    def rows(pick: Callable[[Any], Any]) -> Any:
        parts = []
        for member in members:
            value = pick(member.prompts.schedule[0])
            parts.append(value.expand(member.request.image_count, *value.shape[1:]))
        return _cat(parts)

    kwargs = {
        "prompt_embeds": rows(lambda s: s.parts[0].embeds),
        "negative_prompt_embeds": rows(lambda s: s.negative.embeds),
    }
    if sdxl:
        kwargs["pooled_prompt_embeds"] = rows(lambda s: s.parts[0].pooled)
        kwargs["negative_pooled_prompt_embeds"] = rows(lambda s: s.negative.pooled)
    return kwargs


@contextmanager
def _per_row_guidance(unet: Any, spans: list[tuple[slice, float]], *, enabled: bool) -> Iterator[None]:
    """While inside, ``unet``'s guided output (uncond rows, then cond rows) becomes each span's own
    ``uncond + cfg * (cond - uncond)``, in both halves: the pipeline's scalar guidance step
    ``u + g * (c - u)`` then hands that on unchanged (``c - u`` is exactly zero)."""
    if not enabled:
        yield
        return
    rows = spans[-1][0].stop

    def guide(module: Any, args: Any, output: Any) -> Any:
        eps = output[0] if isinstance(output, tuple) else output.sample
        if eps.shape[0] != 2 * rows:  # not a call of this batch
            return None
        uncond, cond = eps[:rows], eps[rows:]
        # Per span with a Python float, as the pipeline computes it alone (a tensor of scales
        # would round each scale to the UNet's dtype first).
        guided = _cat([uncond[s] + scale * (cond[s] - uncond[s]) for s, scale in spans])
        both = _cat([guided, guided])
        if isinstance(output, tuple):
            return (both, *output[1:])
        output.sample = both
        return output

    handle = unet.register_forward_hook(guide)
    try:
        yield
    finally:
        handle.remove()


class _StepEnd:
    """``callback_on_step_end``: each running job's step report, its interrupt snapshot, and the
    end of the loop once no job has rows left."""

    def __init__(self, members: list[_Member], family: str | None) -> None:
        self.members = members
        self.family = family

    def __call__(self, pipe: Any, index: int, timestep: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
        begin = getattr(pipe.scheduler, "begin_index", None) or 0
        total = max(1, len(pipe.scheduler.timesteps) - begin)
        latents = kwargs["latents"]
        for member in self.members:
            rows = member.rows
            if not rows.running:
                continue
            shown = member.first_row + rows.live[0] * member.request.batch_size
            preview = self._preview(pipe, latents[shown : shown + 1])
            action = rows.advance(min(index + 1, total), total, preview)
            if action == StepAction.INTERRUPT:
                member.snapshot = latents[member.first_row : member.stop_row].detach().clone()
        if not any(member.rows.running for member in self.members):
            pipe._interrupt = True  # the pipeline's documented flag: the loop ends, latents come back
        return {}

    def _preview(self, pipe: Any, row: Any) -> Callable[[], Image] | None:
        from sdgate.engine import previews

        snapshot = row.detach().clone()  # the preview may render later
        return previews.for_step(pipe, snapshot, self.family)  # built only when someone asks


def _finish(group: _Group, member: _Member, plan: Any, latents: Any) -> Outcome:
    """The member's ``EngineOutput`` (its live iterations decoded in their own chunks, with the
    infotexts and notes of a single call), or what ended it."""
    from sdgate.engine import lora
    from sdgate.engine.devices import is_oom
    from sdgate.engine.diffusers_engine import _Draw, _Job, _Seconds
    from sdgate.engine.sampling import check_finite, decode_latents

    error = member.rows.outcome_error()
    if error is not None:
        return error
    engine, model, shape = group.engine, group.model, group.shape
    request, job = member.request, member.entry.job
    pipe = model.pipeline
    own = member.snapshot if member.rows.interrupted else latents[member.first_row : member.stop_row]
    single = _Job(request, job.inputs, job.control, model, shape, _Seconds())
    extras = member.prompts.infotext_params() or None
    seeds, subseeds, size = request.seeds(), request.subseeds(), request.batch_size
    images = []
    try:
        for it in member.rows.live:
            part = slice(it * size, (it + 1) * size)
            check_finite(own[part], request.sampler)
            pictures = decode_latents(pipe, own[part])
            draw = _Draw(it, pipe, plan, seeds[part], subseeds[part], None, None)
            images.extend(engine._images(single, draw, pictures, extras))
    except Exception as exc:  # NaNs in its rows, a failed decode or face restore: this job's own
        if is_oom(exc):  # not this job's fault: the group's jobs without an outcome run alone
            raise
        return exc
    done = time.perf_counter()
    return EngineOutput(
        images=images,
        model_name=model.info.name,
        model_hash=model.info.short_hash,
        sampler=request.sampler,
        scheduler=plan.schedule,
        width=shape.width,
        height=shape.height,
        steps=shape.steps,
        interrupted=member.rows.interrupted,
        notes=[*lora.missing_note(group.missing_loras), *dict.fromkeys(plan.notes)],
        timings={
            "load": group.loaded_at - group.started,
            "sample": done - group.loaded_at,
            "total": done - group.started,
        },
    )
