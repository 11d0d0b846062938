"""Test doubles for the server tests."""

from __future__ import annotations

import json
import struct
import threading
import time
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
from sdgate.core.errors import JobCancelled, OutOfMemory
from sdgate.core.infotext import format_infotext
from sdgate.core.requests import GenerationRequest


def write_fake_checkpoint(path: Path) -> Path:
    """A valid, empty safetensors file: enough for the catalog to list it."""
    header = json.dumps({"__metadata__": {"format": "pt"}}).encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(struct.pack("<Q", len(header)) + header)
    return path


class FakeEngine:
    """Draws flat images whose colour encodes the seed; scriptable per prompt.

    Prompts: "slow" sleeps ``step_s`` per step, "boom" raises, "oom" raises OutOfMemory.
    """

    name = "fake"

    def __init__(self, step_s: float = 0.0) -> None:
        self.step_s = step_s
        self.calls: list[GenerationRequest] = []
        self.started = threading.Event()

    def model_defaults(self, model: str | None) -> ModelDefaults:
        return ModelDefaults(name=model or "fake", width=512, height=512, steps=20, vae_scale_factor=8)

    def unload(self) -> None:
        pass

    def generate(
        self, request: GenerationRequest, inputs: EngineInputs, control: GenerationControl
    ) -> EngineOutput:
        self.calls.append(request)
        self.started.set()
        if "boom" in request.prompt:
            raise RuntimeError("the fake engine exploded")
        if "oom" in request.prompt:
            raise OutOfMemory("out of memory: lower width/height or batch_size")
        width, height, steps = request.width or 512, request.height or 512, request.steps or 20
        seeds = request.seeds()
        images: list[GeneratedImage] = []
        interrupted = False
        for it in range(request.n_iter):
            action = StepAction.CONTINUE
            for step in range(1, steps + 1):
                if "slow" in request.prompt:
                    time.sleep(self.step_s)
                action = control.on_step(
                    StepReport(iteration=it, iterations=request.n_iter, step=step, steps=steps,
                               preview=lambda: Image.new("RGB", (8, 8), "gray"))
                )
                if action == StepAction.CANCEL:
                    raise JobCancelled("cancelled")
                if action != StepAction.CONTINUE:
                    break
            if action == StepAction.SKIP:
                continue
            for b in range(request.batch_size):
                seed = seeds[it * request.batch_size + b]
                colour = (seed % 256, (seed >> 8) % 256, (seed >> 16) % 256)
                params = {"Steps": steps, "Sampler": request.sampler, "CFG scale": request.cfg_scale,
                          "Seed": seed, "Size": f"{width}x{height}", "Model": request.model}
                images.append(GeneratedImage(
                    image=Image.new("RGB", (width, height), colour), seed=seed, subseed=request.subseed,
                    infotext=format_infotext(request.prompt, request.negative_prompt, params),
                    prompt=request.prompt, negative_prompt=request.negative_prompt,
                ))
            if action == StepAction.INTERRUPT:
                interrupted = True
                break
        return EngineOutput(images=images, model_name=request.model or "fake", model_hash=None,
                            sampler=request.sampler, scheduler=request.scheduler, width=width,
                            height=height, steps=steps, interrupted=interrupted)
