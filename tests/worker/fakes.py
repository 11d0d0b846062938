"""Test doubles for the worker tests."""

from __future__ import annotations

import functools
import threading
import time
import uuid
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
from sdgate.core.errors import InvalidRequest, JobCancelled
from sdgate.core.requests import GenerationRequest


def _preview(step: int) -> Image.Image:
    """A tiny image whose green channel tells which step it shows."""
    return Image.new("RGB", (4, 4), (0, step * 10 % 256, 0))


class FakeEngine:
    """Draws flat 16x16 images, one step at a time, honouring every ``StepAction``.

    Prompts script it: "boom" raises RuntimeError, "invalid" raises InvalidRequest. ``step_s`` is
    slept before each step. With ``done_dir``, each call writes ``start-<prompt>-<uuid>`` when it
    begins and ``done-<prompt>-<uuid>`` when it returns, so a test can count invocations across
    processes.
    """

    name = "fake"

    def __init__(
        self,
        *,
        steps: int = 4,
        step_s: float = 0.0,
        hold_at: tuple[int, int] | None = None,
        done_dir: Path | None = None,
    ) -> None:
        self.steps = steps
        self.step_s = step_s
        self.done_dir = done_dir
        self.calls: list[tuple[GenerationRequest, EngineInputs]] = []
        # With ``hold_at=(iteration, step)``, the first job pauses just before reporting that step:
        # ``held`` is set, and it goes on (and reports) once the test sets ``release``.
        self.hold_at = hold_at
        self.held = threading.Event()
        self.release = threading.Event()

    def model_defaults(self, model: str | None) -> ModelDefaults:
        return ModelDefaults(name=model or "fake", width=16, height=16, steps=self.steps, vae_scale_factor=8)

    def unload(self) -> None:
        pass

    def generate(
        self, request: GenerationRequest, inputs: EngineInputs, control: GenerationControl
    ) -> EngineOutput:
        self.calls.append((request, inputs))
        self._mark("start", request)
        if request.prompt == "boom":
            raise RuntimeError("the fake engine exploded")
        if request.prompt == "invalid":
            raise InvalidRequest("the fake engine refuses", field="prompt")
        steps = request.steps or self.steps
        seeds, subseeds = request.seeds(), request.subseeds()
        images: list[GeneratedImage] = []
        interrupted = False
        for iteration in range(request.n_iter):
            action = self._sample(iteration, request.n_iter, steps, control)
            if action is StepAction.CANCEL:
                raise JobCancelled("cancelled")
            if action is StepAction.INTERRUPT:
                interrupted = True
                break
            if action is StepAction.SKIP:
                continue
            for b in range(request.batch_size):
                i = iteration * request.batch_size + b
                infotext = f"{request.prompt}\nSteps: {steps}, Seed: {seeds[i]}, Model: fake"
                images.append(
                    GeneratedImage(
                        image=Image.new("RGB", (16, 16), (i * 40 % 256, 0, 0)),
                        seed=seeds[i],
                        subseed=subseeds[i],
                        infotext=infotext,
                        prompt=request.prompt,
                        negative_prompt=request.negative_prompt,
                    )
                )
        self._mark("done", request)
        return EngineOutput(
            images=images,
            model_name="fake",
            model_hash="0123456789",
            sampler=request.sampler,
            scheduler=request.scheduler,
            width=16,
            height=16,
            steps=steps,
            interrupted=interrupted,
            timings={"sample_s": 0.0},
        )

    def _sample(self, iteration: int, iterations: int, steps: int, control: GenerationControl) -> StepAction:
        for step in range(1, steps + 1):
            if self.step_s:
                time.sleep(self.step_s)
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

    def _mark(self, what: str, request: GenerationRequest) -> None:
        if self.done_dir is not None:
            (self.done_dir / f"{what}-{request.prompt}-{uuid.uuid4().hex}").touch()
