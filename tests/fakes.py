"""The one fake engine for every test (server, worker, SDK, child processes), and a fake checkpoint.

``FakeEngine`` honours the engine contract (``core.engine.Engine``): it reports every step to the
job's control, obeys skip / interrupt / cancel, and draws flat images whose red, green and blue
channels are the seed's three low bytes. Prompts script it:

    "boom"      raises RuntimeError ("the fake engine exploded")
    "oom"       raises OutOfMemory
    "invalid"   raises InvalidRequest on ``prompt``
    "...slow..." sleeps ``slow_step_s`` before each step (``step_s`` applies to every prompt)
"""

from __future__ import annotations

import functools
import json
import struct
import threading
import time
import uuid
from datetime import datetime, timedelta
from pathlib import Path

from PIL import Image

from sdgate.core.engine import (
    EngineInputs,
    EngineOutput,
    GeneratedImage,
    GenerationControl,
    ModelDefaults,
    StepAction,
    StepReport,
)
from sdgate.core.errors import InvalidRequest, JobCancelled, OutOfMemory
from sdgate.core.infotext import format_infotext
from sdgate.core.models import ModelCatalog
from sdgate.core.requests import GenerationRequest


def write_fake_checkpoint(path: Path) -> Path:
    """A valid, empty safetensors file: enough for the catalog to list it (the null and fake
    engines never load it)."""
    header = json.dumps({"__metadata__": {"format": "pt"}}).encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(struct.pack("<Q", len(header)) + header)
    return path


def _preview(step: int) -> Image.Image:
    """A tiny image whose green channel tells which step it shows."""
    return Image.new("RGB", (8, 8), (0, step * 10 % 256, 0))


class FakeEngine:
    """A scriptable engine (see the module docstring).

    ``size`` and ``steps``: the model's defaults (a request without width, height or steps gets
    these). ``step_s`` is slept before every step, ``slow_step_s`` instead for prompts containing
    "slow". With ``hold_at=(iteration, step)`` the first job pauses just before reporting that step:
    ``held`` is set, and it goes on once the test sets ``release``. With ``done_dir``, each call
    writes ``start-<prompt>-<uuid>`` when it begins and ``done-<prompt>-<uuid>`` when it returns, so
    a test can count invocations across processes. ``calls`` and ``inputs`` record every call;
    ``started`` is set by the first.
    """

    name = "fake"

    def __init__(
        self,
        *,
        size: int = 512,
        steps: int = 20,
        step_s: float = 0.0,
        slow_step_s: float = 0.0,
        hold_at: tuple[int, int] | None = None,
        done_dir: Path | None = None,
        catalog: ModelCatalog | None = None,
    ) -> None:
        self.catalog = catalog  # given: the catalog's defaults for its models, as a real engine's
        self.size = size
        self.steps = steps
        self.step_s = step_s
        self.slow_step_s = slow_step_s
        self.hold_at = hold_at
        self.done_dir = done_dir
        self.calls: list[GenerationRequest] = []
        self.inputs: list[EngineInputs] = []
        self.started = threading.Event()
        self.held = threading.Event()
        self.release = threading.Event()

    def model_defaults(self, model: str | None) -> ModelDefaults:
        if self.catalog is not None:
            return self.catalog.defaults_for(self.catalog.resolve(model))
        return ModelDefaults(
            name=model or "fake", width=self.size, height=self.size, steps=self.steps, vae_scale_factor=8
        )

    def unload(self) -> None:
        pass

    def generate(
        self, request: GenerationRequest, inputs: EngineInputs, control: GenerationControl
    ) -> EngineOutput:
        self.calls.append(request)
        self.inputs.append(inputs)
        self.started.set()
        self._mark("start", request)
        self._raise_if_scripted(request.prompt)
        width, height = request.width or self.size, request.height or self.size
        steps = request.steps or self.steps
        pause = self.slow_step_s if "slow" in request.prompt else self.step_s
        seeds, subseeds = request.seeds(), request.subseeds()
        images: list[GeneratedImage] = []
        interrupted = False
        for iteration in range(request.n_iter):
            action = self._sample(iteration, request.n_iter, steps, pause, control)
            if action is StepAction.CANCEL:
                raise JobCancelled("cancelled")
            if action is StepAction.SKIP:
                continue
            for b in range(request.batch_size):
                i = iteration * request.batch_size + b
                images.append(self._image(request, seeds[i], subseeds[i], width, height, steps))
            if action is StepAction.INTERRUPT:
                interrupted = True
                break
        self._mark("done", request)
        return EngineOutput(
            images=images,
            model_name=request.model or "fake",
            model_hash=None,
            sampler=request.sampler,
            scheduler=request.scheduler,
            width=width,
            height=height,
            steps=steps,
            interrupted=interrupted,
            timings={"sample_s": 0.0},
        )

    @staticmethod
    def _raise_if_scripted(prompt: str) -> None:
        if prompt == "boom":
            raise RuntimeError("the fake engine exploded")
        if prompt == "oom":
            raise OutOfMemory("out of memory: lower width/height or batch_size")
        if prompt == "invalid":
            raise InvalidRequest("the fake engine refuses", field="prompt")

    def _sample(
        self, iteration: int, iterations: int, steps: int, pause: float, control: GenerationControl
    ) -> StepAction:
        for step in range(1, steps + 1):
            if pause:
                time.sleep(pause)
            if (iteration, step) == self.hold_at and not self.held.is_set():
                self.held.set()
                self.release.wait(10)
            action = control.on_step(
                StepReport(
                    iteration=iteration,
                    iterations=iterations,
                    step=step,
                    steps=steps,
                    preview=functools.partial(_preview, step),
                )
            )
            if action is not StepAction.CONTINUE:
                return action
        return StepAction.CONTINUE

    @staticmethod
    def _image(
        request: GenerationRequest, seed: int, subseed: int, width: int, height: int, steps: int
    ) -> GeneratedImage:
        colour = (seed % 256, (seed >> 8) % 256, (seed >> 16) % 256)
        params = {"Steps": steps, "Sampler": request.sampler, "CFG scale": request.cfg_scale,
                  "Seed": seed, "Size": f"{width}x{height}", "Model": request.model}
        return GeneratedImage(
            image=Image.new("RGB", (width, height), colour),
            seed=seed,
            subseed=subseed,
            infotext=format_infotext(request.prompt, request.negative_prompt, params),
            prompt=request.prompt,
            negative_prompt=request.negative_prompt,
        )

    def _mark(self, what: str, request: GenerationRequest) -> None:
        if self.done_dir is not None:
            (self.done_dir / f"{what}-{request.prompt}-{uuid.uuid4().hex}").touch()


class FakeWallClock:
    """An aware UTC ``datetime`` clock that moves only when told (quotas, retention)."""

    def __init__(self, start: datetime) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)
