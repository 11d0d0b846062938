"""Hugging Face Inference API, text-to-image task: ``{"inputs", "parameters", "options"}``.

Both spellings of the parameters are accepted: ``width``/``height`` (``huggingface_hub`` >= 0.29
and <= 0.25) and ``target_size: {width, height}`` (0.26-0.28); ``negative_prompt`` as a string or,
as the typed spec of that period had it, a list of strings. Unknown parameters (``extra_body``)
are accepted and logged once.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="allow")


class TargetSize(BaseModel):
    width: int = Field(ge=1)
    height: int = Field(ge=1)


class TextToImageParameters(_Lenient):
    negative_prompt: str | list[str] | None = None
    height: int | None = Field(None, ge=1)
    width: int | None = Field(None, ge=1)
    target_size: TargetSize | None = None
    num_inference_steps: int | None = Field(None, ge=1)
    guidance_scale: float | None = None
    scheduler: str | None = None
    seed: int | None = Field(None, ge=0)


class Options(_Lenient):
    use_cache: bool | None = None
    wait_for_model: bool | None = None


class TextToImageRequest(_Lenient):
    inputs: str = Field(min_length=1)
    parameters: TextToImageParameters = Field(default_factory=TextToImageParameters)
    options: Options | None = None
