"""Prompt text -> what a pipeline call conditions on.

SD 1.x / 2.x prompts are encoded here (once per job, repeated over the batch) rather than by the
pipeline: diffusers' own clip-skip path reaches for ``text_encoder.text_model``, which transformers
5 no longer has, and this is the seam where prompt weighting and long prompts will plug in. SDXL's
two encoders still go through the pipeline, whose clip skip works.
"""

from __future__ import annotations

from typing import Any

import torch

from sdgate.core.requests import GenerationRequest


def diffusers_clip_skip(request: GenerationRequest) -> int | None:
    """A1111 counts the last layer as clip skip 1; diffusers counts layers skipped (None for 0)."""
    return request.clip_skip - 1 if request.clip_skip > 1 else None


@torch.no_grad()
def encode_clip(pipe: Any, text: str, clip_skip: int | None) -> torch.Tensor:
    """One prompt through the pipeline's CLIP text encoder: (1, tokens, width)."""
    tokenizer, encoder = pipe.tokenizer, pipe.text_encoder
    ids = tokenizer(
        [text],
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids.to(encoder.device)
    if clip_skip is None:
        hidden = encoder(ids)[0]
    else:
        states = encoder(ids, output_hidden_states=True).hidden_states
        layer_norm = getattr(encoder, "text_model", encoder).final_layer_norm
        hidden = layer_norm(states[-(clip_skip + 1)])
    return hidden.to(dtype=pipe.unet.dtype)


def prompt_kwargs(pipe: Any, family: str | None, request: GenerationRequest) -> dict[str, Any]:
    """The prompt arguments of one pipeline call of ``request.batch_size`` images."""
    batch, skip = request.batch_size, diffusers_clip_skip(request)
    if family == "sdxl":
        # An empty negative prompt is zeroed (A1111 does so for SDXL) when the pipeline gets None.
        negative = [request.negative_prompt] * batch if request.negative_prompt else None
        return {"prompt": [request.prompt] * batch, "negative_prompt": negative, "clip_skip": skip}
    positive = encode_clip(pipe, request.prompt, skip)
    negative_embeds = encode_clip(pipe, request.negative_prompt, skip)
    return {
        "prompt_embeds": positive.expand(batch, -1, -1),
        "negative_prompt_embeds": negative_embeds.expand(batch, -1, -1),
    }
