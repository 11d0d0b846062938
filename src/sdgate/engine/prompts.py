"""Prompt text -> what a pipeline call conditions on, per step, as A1111 does it.

Prompts are encoded here rather than by the pipeline: diffusers' own clip-skip path reaches for
``text_encoder.text_model``, which transformers 5 no longer has, and A1111's prompt language needs
it anyway. Each text of a prompt's schedule (``core.prompts``) is split into weighted runs,
tokenized into 75-token chunks (``BREAK`` starts a new one; a trailing phrase moves to the next
chunk at a comma, ``comma_padding_backtrack`` 20; a textual-inversion name becomes its vectors'
slots), each chunk is encoded as BOS + 75 + EOS, scaled by its weights with the mean restored
("Original" emphasis), and the chunks are concatenated, so prompts longer than 77 tokens work.

SDXL runs the same chunks through both text encoders (penultimate layers, concatenated on width,
each encoder's mean restored on its own); the pooled vector is text encoder 2's for the first
chunk, and an empty negative prompt is zeros, as A1111.

Where the schedule switches (prompt editing, alternation) the step callback hands the pipeline the
next step's embeddings. ``AND`` parts beyond the first are evaluated by ``engine.composable``'s
UNet hook while ``PromptPlan.applied`` is active; a one-part prompt of weight 1 installs nothing.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch

from sdgate.core.prompts import (
    BREAK,
    extract_networks,
    parse_attention,
    parse_prompt,
    prompt_schedule,
    text_at_step,
)
from sdgate.core.requests import GenerationRequest
from sdgate.engine.composable import Part, composed
from sdgate.engine.embeddings import Embedding, EmbeddingSet

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
    fixes: list[tuple[int, Embedding]] = field(default_factory=list)  # (offset in tokens, embedding)


def _comma_id(tokenizer: Any) -> int:
    """The id of ``,</w>`` (A1111 breaks long chunks after a comma), looked up once per tokenizer:
    ``get_vocab()`` builds the whole 49,408-entry dict at every call (~50 ms, twice per image)."""
    cached = getattr(tokenizer, "_sdgate_comma_id", None)
    if cached is None:
        cached = tokenizer.get_vocab().get(",</w>", -1)
        with contextlib.suppress(AttributeError):  # one that takes no attributes: looked up each time
            tokenizer._sdgate_comma_id = cached
    return int(cached)


def chunk_tokens(tokenizer: Any, text: str, embeddings: EmbeddingSet | None = None) -> list[_Chunk]:
    """A1111's ``tokenize_line``: weighted runs -> chunks of exactly 75 tokens (padded)."""
    runs = parse_attention(text)
    texts = [run for run, weight in runs]
    ids = tokenizer(texts, add_special_tokens=False, truncation=False).input_ids
    comma = _comma_id(tokenizer)
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

    def move_after_comma() -> None:
        nonlocal chunk
        cut = last_comma + 1
        moved = _Chunk(
            chunk.tokens[cut:], chunk.weights[cut:], [(at - cut, e) for at, e in chunk.fixes if at >= cut]
        )
        del chunk.tokens[cut:], chunk.weights[cut:]
        chunk.fixes = [(at, e) for at, e in chunk.fixes if at < cut]
        close()
        chunk = moved

    for tokens, (run, weight) in zip(ids, runs, strict=True):
        if run == BREAK and weight == -1.0:
            close()
            continue
        position = 0
        while position < len(tokens):
            token = tokens[position]
            found = embeddings.find(tokenizer, tokens, position) if embeddings is not None else None
            if found is not None:
                embedding, name_length = found
                if len(chunk.tokens) + embedding.count > CHUNK:
                    close()
                chunk.fixes.append((len(chunk.tokens), embedding))
                chunk.tokens += [0] * embedding.count  # A1111's placeholder id; the vectors replace it
                chunk.weights += [weight] * embedding.count
                position += name_length
                continue
            if token == comma:
                last_comma = len(chunk.tokens)
            elif len(chunk.tokens) == CHUNK and last_comma != -1 and CHUNK - last_comma <= COMMA_BACKTRACK:
                move_after_comma()
            if len(chunk.tokens) == CHUNK:
                close()
            chunk.tokens.append(token)
            chunk.weights.append(weight)
            position += 1
    if chunk.tokens or not chunks:
        close()
    return chunks


# --- encoding ----------------------------------------------------------------------------------


@contextmanager
def _vectors_in_place(encoder: Any, rows: list[list[tuple[int, torch.Tensor]]]) -> Iterator[None]:
    """While inside, ``encoder``'s token embedding puts each row's (offset, vectors) after its BOS."""
    if not any(rows):
        yield
        return

    def replace(module: Any, args: Any, output: torch.Tensor) -> torch.Tensor:
        out = output.clone()
        for row, fixes in enumerate(rows):
            for offset, vectors in fixes:
                out[row, 1 + offset : 1 + offset + vectors.shape[0]] = vectors.to(out.device, out.dtype)
        return out

    handle = encoder.get_input_embeddings().register_forward_hook(replace)
    try:
        yield
    finally:
        handle.remove()


def _rows(tokenizer: Any, chunks: list[_Chunk]) -> torch.Tensor:
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    rows = [[bos, *c.tokens, eos] for c in chunks]
    pad = tokenizer.pad_token_id
    if pad is not None and pad != eos:  # SD 2.x / SDXL te2 pad with "!" after the first EOS, as A1111
        rows = [row[: row.index(eos) + 1] + [pad] * (len(row) - row.index(eos) - 1) for row in rows]
    return torch.tensor(rows)


def _apply_weights(z: torch.Tensor, chunks: list[_Chunk]) -> torch.Tensor:
    """Scale each token by its weight and give each chunk back its mean ("Original" emphasis)."""
    weights = torch.tensor([[1.0, *c.weights, 1.0] for c in chunks], device=z.device)
    if not bool((weights != 1.0).any()):
        return z
    original_mean = z.mean(dim=(1, 2), keepdim=True)
    z = z * weights.unsqueeze(-1)
    new_mean = z.mean(dim=(1, 2), keepdim=True)
    # A layer-normed output can average to ~0 (tiny random models): then leave the mean be.
    ratio = torch.where(new_mean.abs() > 1e-12, original_mean / new_mean, torch.ones_like(new_mean))
    return z * ratio


@torch.no_grad()
def _run_encoder(
    encoder: Any, tokenizer: Any, chunks: list[_Chunk], which: int, layer: int | None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(hidden states (chunks, 77, width), projected pooled output or None) of one text encoder.

    ``layer`` None: the last layer (final layer norm included); else that hidden-states index.
    ``which`` picks each embedding's vectors for this encoder (SDXL: 0 clip_l, 1 clip_g).
    """
    ids = _rows(tokenizer, chunks).to(encoder.device)
    fixes = [[(offset, e.vectors[which]) for offset, e in c.fixes] for c in chunks]
    with _vectors_in_place(encoder, fixes):
        out = encoder(ids, output_hidden_states=layer is not None)
    pooled = getattr(out, "text_embeds", None)
    if layer is None:
        return out[0], pooled
    return out.hidden_states[layer], pooled


def _sd_states(pipe: Any, chunks: list[_Chunk], clip_skip: int | None) -> torch.Tensor:
    encoder = pipe.text_encoder
    if clip_skip is None:
        return _run_encoder(encoder, pipe.tokenizer, chunks, 0, None)[0]
    states, _ = _run_encoder(encoder, pipe.tokenizer, chunks, 0, -(clip_skip + 1))
    layer_norm = getattr(encoder, "text_model", encoder).final_layer_norm
    return layer_norm(states)  # type: ignore[no-any-return]


@dataclass
class Encoded:
    """One scheduled text, encoded: (1, 77 * chunks, width), SDXL's pooled (1, dim), embeddings used."""

    embeds: torch.Tensor
    pooled: torch.Tensor | None = None
    used: list[Embedding] = field(default_factory=list)
    zero: bool = False  # SDXL's empty negative prompt: pads with zeros too


@torch.no_grad()
def encode_text(
    pipe: Any, family: str | None, text: str, clip_skip: int | None, embeddings: EmbeddingSet | None = None
) -> Encoded:
    chunks = chunk_tokens(pipe.tokenizer, text, embeddings)
    used = list({id(e): e for c in chunks for _, e in c.fixes}.values())
    if family == "sdxl":
        layer = -((clip_skip or 0) + 2)  # penultimate by default, no final norm (diffusers, A1111)
        z1, _ = _run_encoder(pipe.text_encoder, pipe.tokenizer, chunks, 0, layer)
        z2, pooled = _run_encoder(pipe.text_encoder_2, pipe.tokenizer_2, chunks, 1, layer)
        z = torch.cat([_apply_weights(z1.float(), chunks), _apply_weights(z2.float(), chunks)], dim=-1)
        assert pooled is not None
        dtype = pipe.unet.dtype
        return Encoded(z.reshape(1, -1, z.shape[-1]).to(dtype), pooled[:1].to(dtype), used)
    z = _apply_weights(_sd_states(pipe, chunks, clip_skip).float(), chunks)
    return Encoded(z.reshape(1, -1, z.shape[-1]).to(dtype=pipe.unet.dtype), None, used)


def encode_weighted(
    pipe: Any, text: str, clip_skip: int | None, embeddings: EmbeddingSet | None = None
) -> torch.Tensor:
    """One scheduled text -> (1, 77 * chunks, width) for SD 1.x / 2.x."""
    return encode_text(pipe, None, text, clip_skip, embeddings).embeds


# --- one pipeline call -------------------------------------------------------------------------


@dataclass
class Switch:
    """The conditioning up to and including ``last_step`` (1-based)."""

    last_step: int
    parts: list[Encoded]  # per AND part; the first is padded to the negative's length
    negative: Encoded


@dataclass
class PromptPlan:
    """The prompt arguments of one pipeline call, the step hook that switches them, and the AND
    hook that combines the parts."""

    kwargs: dict[str, Any]
    schedule: list[Switch]  # one entry when nothing is scheduled
    weights: list[float]  # per AND part
    batch: int
    steps: int
    sdxl: bool = False
    used_embeddings: dict[str, str] = field(default_factory=dict)  # name -> short hash, first use first
    _step: int = 0  # the 0-based sampler step the UNet is evaluating now

    @property
    def scheduled(self) -> bool:
        return len(self.schedule) > 1

    @property
    def composable(self) -> bool:
        return len(self.weights) > 1 or self.weights[0] != 1.0

    def switch_for(self, step_index: int) -> Switch:
        for switch in self.schedule:
            if step_index <= switch.last_step:
                return switch
        return self.schedule[-1]

    def embeds_for(self, step_index: int) -> tuple[torch.Tensor, torch.Tensor]:
        switch = self.switch_for(step_index)
        return switch.parts[0].embeds, switch.negative.embeds

    def wrap(self, callback: Callback) -> Callback:
        """``callback`` plus, when the schedule switches, the next step's embeddings."""
        if not self.scheduled:
            return callback

        def on_step_end(pipe: Any, index: int, timestep: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
            out = dict(callback(pipe, index, timestep, kwargs))
            begin = getattr(pipe.scheduler, "begin_index", None) or 0  # img2img runs the tail only
            total = max(1, len(pipe.scheduler.timesteps) - begin)
            self._step = (index + 1) * self.steps // total  # 0-based sampler step of the next call
            switch = self.switch_for(self._step)
            cfg = kwargs["prompt_embeds"].shape[0] == 2 * self.batch
            out["prompt_embeds"] = self._batched(switch.parts[0].embeds, switch.negative.embeds, cfg)
            if self.sdxl and "add_text_embeds" in kwargs:
                out["add_text_embeds"] = self._batched(switch.parts[0].pooled, switch.negative.pooled, cfg)
            return out

        return on_step_end

    def _batched(self, positive: Any, negative: Any, cfg: bool) -> torch.Tensor:
        positive = positive.expand(self.batch, *positive.shape[1:])
        if not cfg:
            return positive  # type: ignore[no-any-return]
        return torch.cat([negative.expand(self.batch, *negative.shape[1:]), positive])

    @property
    def tensor_inputs(self) -> list[str]:
        if not self.scheduled:
            return ["latents"]
        return ["latents", "prompt_embeds", "add_text_embeds"] if self.sdxl else ["latents", "prompt_embeds"]

    def _current_parts(self) -> list[Part]:
        switch = self.switch_for(self._step)
        return [Part(p.embeds, p.pooled, w) for p, w in zip(switch.parts, self.weights, strict=True)]

    @contextmanager
    def applied(self, pipe: Any) -> Iterator[None]:
        """Around the pipeline call: AND parts are combined (nothing happens for one plain part)."""
        self._step = 0
        if not self.composable:
            yield
            return
        with composed(pipe.unet, self.batch, self._current_parts):
            yield

    def infotext_params(self) -> dict[str, object]:
        return ti_hashes(self.used_embeddings)


def ti_hashes(*used: dict[str, str]) -> dict[str, object]:
    """``TI hashes`` as A1111 writes it (``name: shorthash, ...``) when embeddings were used."""
    merged: dict[str, str] = {}
    for names in used:
        for name, short in names.items():
            merged.setdefault(name, short)
    if not merged:
        return {}
    return {"TI hashes": ", ".join(f"{n.replace(':', '').replace(',', '')}: {h}" for n, h in merged.items())}


def prompt_plan(
    pipe: Any,
    family: str | None,
    request: GenerationRequest,
    steps: int,
    *,
    hires_of: int | None = None,
    embeddings: EmbeddingSet | None = None,
) -> PromptPlan:
    """Encode ``request``'s prompts for a call of ``request.batch_size`` images over ``steps``.

    ``hires_of=base_steps``: the call is a hires pass of ``steps`` steps (A1111's timeline there).
    """
    batch, skip, sdxl = request.batch_size, diffusers_clip_skip(request), family == "sdxl"
    positive = parse_prompt(request.prompt, steps, hires_of=hires_of)
    # The negative prompt is not split on AND (A1111).
    negative = prompt_schedule(extract_networks(request.negative_prompt)[0], steps, hires_of=hires_of)
    zero_empty = sdxl and bool(getattr(pipe, "config", {}).get("force_zeros_for_empty_prompt", True))
    cache: dict[tuple[str, bool], Encoded] = {}
    used: dict[str, str] = {}

    def encoded(text: str, is_negative: bool = False) -> Encoded:
        key = (text, is_negative and zero_empty and text == "")
        if key not in cache:
            result = encode_text(pipe, family, text, skip, embeddings)
            if key[1]:
                pooled = None if result.pooled is None else torch.zeros_like(result.pooled)
                result = Encoded(torch.zeros_like(result.embeds), pooled, [], zero=True)
            cache[key] = result
        return cache[key]

    schedules = [schedule for schedule, _ in positive.parts]
    switches = sorted({s for schedule in schedules for s, _ in schedule} | {s for s, _ in negative})
    rows = [
        (
            step,
            [encoded(text_at_step(schedule, step)) for schedule in schedules],
            encoded(text_at_step(negative, step), is_negative=True),
        )
        for step in switches
    ]
    for _, parts, _neg in rows:  # A1111 lists the prompt's embeddings, then the negative's
        for e in (e for p in parts for e in p.used):
            used.setdefault(e.name, e.shorthash)
    for _, _, neg in rows:
        for e in neg.used:
            used.setdefault(e.name, e.shorthash)
    # The first part and the negative go through the UNet as one batch: pad every one to the
    # longest with the empty prompt's chunk (A1111's pad_cond_uncond), zeros for a zeroed negative.
    longest = max(t.embeds.shape[1] for _, parts, neg in rows for t in (parts[0], neg))
    empty = encoded("")
    schedule = [
        Switch(step, [_pad(parts[0], longest, empty), *parts[1:]], _pad(neg, longest, empty))
        for step, parts, neg in rows
    ]
    first = schedule[0]
    kwargs: dict[str, Any] = {
        "prompt_embeds": first.parts[0].embeds.expand(batch, -1, -1),
        "negative_prompt_embeds": first.negative.embeds.expand(batch, -1, -1),
    }
    if sdxl:
        assert first.parts[0].pooled is not None and first.negative.pooled is not None
        kwargs["pooled_prompt_embeds"] = first.parts[0].pooled.expand(batch, -1)
        kwargs["negative_pooled_prompt_embeds"] = first.negative.pooled.expand(batch, -1)
    weights = [weight for _, weight in positive.parts]
    return PromptPlan(kwargs, schedule, weights, batch, steps, sdxl, used)


def _pad(encoded: Encoded, length: int, empty: Encoded) -> Encoded:
    embeds = encoded.embeds
    missing = (length - embeds.shape[1]) // empty.embeds.shape[1]
    if missing <= 0:
        return encoded
    filler = torch.zeros_like(empty.embeds) if encoded.zero else empty.embeds
    padded = torch.cat([embeds, *([filler] * missing)], dim=1)
    return Encoded(padded, encoded.pooled, encoded.used, encoded.zero)
