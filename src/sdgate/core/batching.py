"""Which jobs may share one UNet batch on a GPU (cross-request batching, issue 17).

``batch_key(request)`` is a short string that two requests share exactly when an engine may run them
as rows of one batch: the same model, VAE, size, steps, sampler and schedule (and its parameters),
LoRA set and weights, clip skip and tiling. Prompts, negative prompts, CFG scales, seeds and batch
sizes may differ: each row keeps its own prompt embeddings, guidance scale and seeded generator, so
every image equals what it would be alone (within a stated floating-point tolerance).

A request whose work cannot be split into independent rows of one denoising loop gets ``None`` and
always runs alone: img2img and inpainting (init images), hires fix, a refiner, variation seeds, seed
resizing, NGMS (``s_min_uncond``), ControlNet units, prompt editing and alternation (``[a:b:when]``,
``[a|b]``) and composable prompts (``AND``), whose prompts change per step or per part.

The store keeps the key in its own column (``jobs.batch_key``, computed at submit), so a worker
claims a compatible group in one transaction (``JobStore.claim_group(..., batched=True)``). The key
names only what the request says; the engine still checks what it learns at run time (the prompt's
token length, the resolved model) and splits a group it cannot run as one batch.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from sdgate.core.prompts import extract_networks, parse_prompt, split_and
from sdgate.core.requests import GenerationRequest, Mode

# Keys are stored in a String(64) column: a SHA-256 hex digest of the canonical description.
KEY_CHARS = 64

# Rows one job may bring to a batch at most (batch_size * n_iter); larger jobs run alone.
MAX_ROWS_PER_JOB = 32


def batch_key(request: object) -> str | None:
    """The compatibility key of ``request`` (see the module doc), or None when it runs alone."""
    if not isinstance(request, GenerationRequest) or not batchable(request):
        return None
    loras = sorted((lora.name, lora.te_weight, lora.unet_weight) for lora in request.loras)
    description: dict[str, Any] = {
        "model": request.model,
        "vae": request.vae,
        "size": [request.width, request.height],
        "steps": request.steps,
        "sampler": request.sampler,
        "scheduler": request.scheduler,
        "sampler_params": [request.eta, request.s_churn, request.s_tmin, request.s_tmax, request.s_noise,
                           request.eta_noise_seed_delta],
        "clip_skip": request.clip_skip,
        "tiling": request.tiling,
        "loras": loras,
        # LoRAs named in the prompts themselves (A1111's <lora:name:weight>), and styles (they may
        # bring their own): the same set for every row of a batch.
        "prompt_networks": sorted(_networks(request.prompt) + _networks(request.negative_prompt)),
        "styles": sorted(request.styles),
        "restore_faces": request.restore_faces,
        # Guidance on or off changes the UNet batch (one or two rows per image).
        "guided": request.cfg_scale > 1.0,
    }
    canonical = json.dumps(description, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def batchable(request: GenerationRequest) -> bool:
    """Whether ``request`` can run as independent rows of one denoising loop (see the module doc)."""
    if request.mode is not Mode.TXT2IMG or request.init_images or request.mask is not None:
        return False
    if request.hires is not None or request.refiner is not None:
        return False
    if request.subseed_strength > 0 or request.seed_resize_from_w > 0 or request.seed_resize_from_h > 0:
        return False
    if request.s_min_uncond > 0 or request.image_count > MAX_ROWS_PER_JOB or request.controlnets:
        return False
    return _plain_prompt(request.prompt) and _plain_prompt(request.negative_prompt)


def _plain_prompt(prompt: str) -> bool:
    """No AND parts and no prompt editing or alternation: one text for every step."""
    if "[" not in prompt and "AND" not in prompt:  # the common prompt, told without parsing it
        return True
    text, _ = extract_networks(prompt)
    if len(split_and(text)) > 1:
        return False
    parsed = parse_prompt(text, 1000)
    return all(len(schedule) <= 1 for schedule, _ in parsed.parts)


def _networks(prompt: str) -> list[str]:
    if "<" not in prompt:  # every network tag opens with one
        return []
    _, networks = extract_networks(prompt)
    return [f"{n.kind}:{':'.join(n.positional)}:{sorted(n.named.items())}" for n in networks]
