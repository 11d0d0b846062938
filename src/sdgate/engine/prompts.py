"""Prompt text -> what a pipeline call conditions on, per step, as A1111 does it.

SD 1.x / 2.x prompts are encoded here rather than by the pipeline: diffusers' own clip-skip path
reaches for ``text_encoder.text_model``, which transformers 5 no longer has, and A1111's prompt
language needs it anyway. Each text of a prompt's schedule (``core.prompts``) is split into
weighted runs, tokenized into 75-token chunks (``BREAK`` starts a new one; a trailing phrase moves
to the next chunk at a comma, ``comma_padding_backtrack`` 20), each chunk is encoded as
BOS + 75 + EOS, scaled by its weights with the mean restored ("Original" emphasis), and the chunks
are concatenated, so prompts longer than 77 tokens work. Where the schedule switches (prompt
editing, alternation) the step callback hands the pipeline the next step's embeddings.

SDXL's two encoders still go through the pipeline: there the emphasis syntax is stripped (logged).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from sdgate.core.errors import InvalidRequest
from sdgate.core.prompts import BREAK, parse_attention, parse_prompt, text_at_step
from sdgate.core.requests import GenerationRequest

log = logging.getLogger("sdgate.engine")

CHUNK = 75  # tokens per chunk between BOS and EOS
COMMA_BACKTRACK = 20  # A1111's comma_padding_backtrack default

Callback = Callable[[Any, int, Any, dict[str, Any]], dict[str, Any]]


def diffusers_clip_skip(request: GenerationRequest) -> int | None:
    """A1111 counts the last layer as clip skip 1; diffusers counts layers skipped (None for 0)."""
    return request.clip_skip - 1 if request.clip_skip > 1 else None


# --- tokens ------------------------------------------------------------------------------------


@dataclass
class _Chunk:
    tokens: list[int]
    weights: list[float]


def chunk_tokens(tokenizer: Any, text: str) -> list[_Chunk]:
    """A1111's ``tokenize_line``: weighted runs -> chunks of exactly 75 tokens (padded)."""
    runs = parse_attention(text)
    texts = [run for run, weight in runs]
    ids = tokenizer(texts, add_special_tokens=False, truncation=False).input_ids
    comma = tokenizer.get_vocab().get(",</w>", -1)
    pad = tokenizer.eos_token_id  # encode_weighted turns what follows the first EOS into PAD
    chunks: list[_Chunk] = []
    chunk = _Chunk([], [])
    last_comma = -1

    def close() -> None:
        nonlocal chunk, last_comma
        missing = CHUNK - len(chunk.tokens)
        chunk.tokens += [pad] * missing
        chunk.weights += [1.0] * missing
        chunks.append(chunk)
        chunk = _Chunk([], [])
        last_comma = -1

    for tokens, (run, weight) in zip(ids, runs, strict=True):
        if run == BREAK and weight == -1.0:
            close()
            continue
        for token in tokens:
            if token == comma:
                last_comma = len(chunk.tokens)
            elif len(chunk.tokens) == CHUNK and last_comma != -1 and CHUNK - last_comma <= COMMA_BACKTRACK:
                moved = _Chunk(chunk.tokens[last_comma + 1 :], chunk.weights[last_comma + 1 :])
                del chunk.tokens[last_comma + 1 :], chunk.weights[last_comma + 1 :]
                close()
                chunk = moved
            if len(chunk.tokens) == CHUNK:
                close()
            chunk.tokens.append(token)
            chunk.weights.append(weight)
    if chunk.tokens or not chunks:
        close()
    return chunks


# --- encoding ----------------------------------------------------------------------------------


@torch.no_grad()
def _encode_ids(pipe: Any, ids: torch.Tensor, clip_skip: int | None) -> torch.Tensor:
    encoder = pipe.text_encoder
    ids = ids.to(encoder.device)
    if clip_skip is None:
        return encoder(ids)[0]  # type: ignore[no-any-return]
    states = encoder(ids, output_hidden_states=True).hidden_states
    layer_norm = getattr(encoder, "text_model", encoder).final_layer_norm
    return layer_norm(states[-(clip_skip + 1)])  # type: ignore[no-any-return]


@torch.no_grad()
def encode_weighted(pipe: Any, text: str, clip_skip: int | None) -> torch.Tensor:
    """One scheduled text -> (1, 77 * chunks, width): weights applied, each chunk's mean restored."""
    tokenizer = pipe.tokenizer
    chunks = chunk_tokens(tokenizer, text)
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    rows = [[bos, *c.tokens, eos] for c in chunks]
    pad = tokenizer.pad_token_id
    if pad is not None and pad != eos:  # SD 2.x pads with "!" after the first EOS, as A1111
        rows = [row[: row.index(eos) + 1] + [pad] * (len(row) - row.index(eos) - 1) for row in rows]
    ids = torch.tensor(rows)
    z = _encode_ids(pipe, ids, clip_skip).float()
    weights = torch.tensor([[1.0, *c.weights, 1.0] for c in chunks], device=z.device)
    if bool((weights != 1.0).any()):
        original_mean = z.mean(dim=(1, 2), keepdim=True)
        z = z * weights.unsqueeze(-1)
        new_mean = z.mean(dim=(1, 2), keepdim=True)
        # A layer-normed output can average to ~0 (tiny random models): then leave the mean be.
        ratio = torch.where(new_mean.abs() > 1e-12, original_mean / new_mean, torch.ones_like(new_mean))
        z = z * ratio
    return z.reshape(1, -1, z.shape[-1]).to(dtype=pipe.unet.dtype)


# --- one pipeline call -------------------------------------------------------------------------


@dataclass
class PromptPlan:
    """The prompt arguments of one pipeline call, and the step hook that switches them."""

    kwargs: dict[str, Any]
    # (last 1-based step, positive, negative) per switch; one entry when nothing is scheduled.
    schedule: list[tuple[int, torch.Tensor, torch.Tensor]]
    batch: int
    steps: int

    @property
    def scheduled(self) -> bool:
        return len(self.schedule) > 1

    def embeds_for(self, step_index: int) -> tuple[torch.Tensor, torch.Tensor]:
        for last_step, positive, negative in self.schedule:
            if step_index <= last_step:
                return positive, negative
        return self.schedule[-1][1], self.schedule[-1][2]

    def wrap(self, callback: Callback) -> Callback:
        """``callback`` plus, when the schedule switches, the next step's embeddings."""
        if not self.scheduled:
            return callback

        def on_step_end(pipe: Any, index: int, timestep: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
            out = dict(callback(pipe, index, timestep, kwargs))
            begin = getattr(pipe.scheduler, "begin_index", None) or 0  # img2img runs the tail only
            total = max(1, len(pipe.scheduler.timesteps) - begin)
            next_step = (index + 1) * self.steps // total  # 0-based sampler step of the next call
            positive, negative = self.embeds_for(next_step)
            positive = positive.expand(self.batch, -1, -1)
            negative = negative.expand(self.batch, -1, -1)
            current = kwargs["prompt_embeds"]
            out["prompt_embeds"] = (
                torch.cat([negative, positive]) if current.shape[0] == 2 * self.batch else positive
            )
            return out

        return on_step_end

    @property
    def tensor_inputs(self) -> list[str]:
        return ["latents", "prompt_embeds"] if self.scheduled else ["latents"]


def prompt_plan(pipe: Any, family: str | None, request: GenerationRequest, steps: int) -> PromptPlan:
    """Encode ``request``'s prompts for a call of ``request.batch_size`` images over ``steps``."""
    batch, skip = request.batch_size, diffusers_clip_skip(request)
    positive = parse_prompt(request.prompt, steps)
    negative = parse_prompt(request.negative_prompt, steps)
    for parsed, field in ((positive, "prompt"), (negative, "negative_prompt")):
        if len(parsed.parts) > 1:
            raise InvalidRequest(f"{field}: AND (composable diffusion) is not supported yet", field=field)
    pos_schedule, neg_schedule = positive.parts[0][0], negative.parts[0][0]
    if family == "sdxl":
        return _sdxl_plan(pos_schedule[0][1], neg_schedule[0][1], request, batch, skip, steps)
    cache: dict[str, torch.Tensor] = {}

    def encoded(text: str) -> torch.Tensor:
        if text not in cache:
            cache[text] = encode_weighted(pipe, text, skip)
        return cache[text]

    switches = sorted({s for s, _ in pos_schedule} | {s for s, _ in neg_schedule})
    pairs = [
        (step, encoded(text_at_step(pos_schedule, step)), encoded(text_at_step(neg_schedule, step)))
        for step in switches
    ]
    # Positive and negative go through the UNet as one batch: pad every one to the longest with
    # the empty prompt's chunk (A1111's pad_cond_uncond).
    longest = max(t.shape[1] for _, p, n in pairs for t in (p, n))
    empty = encoded("")
    schedule = [(step, _pad(p, longest, empty), _pad(n, longest, empty)) for step, p, n in pairs]
    first_pos, first_neg = schedule[0][1], schedule[0][2]
    kwargs = {
        "prompt_embeds": first_pos.expand(batch, -1, -1),
        "negative_prompt_embeds": first_neg.expand(batch, -1, -1),
    }
    return PromptPlan(kwargs, schedule, batch, steps)


def _pad(embeds: torch.Tensor, length: int, empty: torch.Tensor) -> torch.Tensor:
    missing = (length - embeds.shape[1]) // empty.shape[1]
    return torch.cat([embeds, *([empty] * missing)], dim=1) if missing > 0 else embeds


_sdxl_warned = False


def _plain(text: str) -> str:
    return "".join(run if weight != -1.0 else " " for run, weight in parse_attention(text))


def _sdxl_plan(
    prompt: str, negative: str, request: GenerationRequest, batch: int, skip: int | None, steps: int
) -> PromptPlan:
    global _sdxl_warned
    plain, plain_negative = _plain(prompt), _plain(negative)
    if not _sdxl_warned and (plain != prompt or plain_negative != negative):
        _sdxl_warned = True
        log.warning("SDXL: emphasis, BREAK and prompt editing are not applied yet; the brackets are stripped")
    # An empty negative prompt is zeroed (A1111 does so for SDXL) when the pipeline gets None.
    kwargs = {
        "prompt": [plain] * batch,
        "negative_prompt": [plain_negative] * batch if plain_negative else None,
        "clip_skip": skip,
    }
    return PromptPlan(kwargs, [], batch, steps)
