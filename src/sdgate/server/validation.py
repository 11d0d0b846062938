"""Request checks shared by every dialect: seeds, sizes and counts against the model and the limits.

Two layers. Each dialect's ``translate`` calls ``check_size`` / ``check_counts`` early, with its own
field names. Then ``check_request`` (from ``jobflow.submit``, so every dialect, A1111 script and
retry passes it) checks the translated ``GenerationRequest`` as the engine will run it, last,
before the job store is touched:

1. text: each prompt's bytes (413; counted before anything else reads it) then CLIP tokens; every
   text field valid Unicode (no lone surrogates) without NUL characters;
2. numbers: every float finite, the integer fields in their ranges;
3. sizes of every pass: the first, the hires upscale and final size, a seed resize;
4. steps per pass and over all passes; batch_size x n_iter; LoRAs (listed and in the prompt);
5. the job's estimated peak memory against ``max_job_memory_bytes`` or the engine's budget.

``check_metadata`` bounds a job's metadata (depth, bytes as JSON, valid text, finite numbers).
Every refusal is an ``InvalidRequest`` (400) or ``PayloadTooLarge`` (413) naming the field and the
setting that bounds it.
"""

from __future__ import annotations

import json
import math
import re
import secrets
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from sdgate.core.engine import MemoryBudget, ModelDefaults
from sdgate.core.errors import InvalidRequest, PayloadTooLarge
from sdgate.core.limits import Passes, Size, estimate_job_memory, passes
from sdgate.core.loras import LORA_KINDS
from sdgate.core.models import AssetFile, read_safetensors_shapes
from sdgate.core.prompts import extract_networks
from sdgate.core.requests import MAX_SEED, GenerationRequest
from sdgate.core.tokens import count_tokens
from sdgate.settings import Settings

# A1111 draws random seeds from [0, 4294967294].
RANDOM_SEED_BOUND = 4294967295
GIB = 2**30
# Integer fields of a request with a fixed range (the sizes, steps and counts have settings).
_INT_RANGES: dict[str, tuple[int, int]] = {
    "clip_skip": (1, 12),
    "eta_noise_seed_delta": (0, MAX_SEED),
    "resize_mode": (0, 3),
    "mask_blur_x": (0, 256),
    "mask_blur_y": (0, 256),
    "inpainting_fill": (0, 3),
}
_PROMPTS = ("prompt", "negative_prompt", "hires.prompt", "hires.negative_prompt")


def resolve_seed(value: int | str | None, *, field: str) -> int:
    """-1, "" and null mean random (A1111); anything else must be an integer in [0, 2**64-1]."""
    if value is None or value == "" or value == -1 or value == "-1":
        return secrets.randbelow(RANDOM_SEED_BOUND)
    try:
        seed = int(value)
    except (TypeError, ValueError):
        raise InvalidRequest(f"{field}: must be an integer, got {value!r}", field=field) from None
    if not 0 <= seed <= MAX_SEED:
        raise InvalidRequest(f"{field}: must be -1 (random) or between 0 and 2**64-1", field=field)
    return seed


def check_size(width: int, height: int, defaults: ModelDefaults, settings: Settings) -> None:
    factor = defaults.vae_scale_factor
    for name, value in (("width", width), ("height", height)):
        if value < factor or value > settings.max_side:
            raise InvalidRequest(
                f"{name}: must be between {factor} and {settings.max_side} (max_side), got {value}",
                field=name,
            )
        if value % factor:
            raise InvalidRequest(
                f"{name}: must be a multiple of {factor} for model {defaults.name}, got {value}", field=name
            )
    if width * height > settings.max_pixels:
        raise InvalidRequest(
            f"width: {width}x{height} is more than the {settings.max_pixels} pixels allowed (max_pixels)",
            field="width",
        )


def check_counts(steps: int, batch_size: int, n_iter: int, cfg_scale: float, settings: Settings) -> None:
    if not 1 <= steps <= settings.max_steps:
        raise InvalidRequest(
            f"steps: must be between 1 and {settings.max_steps} (max_steps), got {steps}", field="steps"
        )
    if batch_size < 1:
        raise InvalidRequest(f"batch_size: must be at least 1, got {batch_size}", field="batch_size")
    if n_iter < 1:
        raise InvalidRequest(f"n_iter: must be at least 1, got {n_iter}", field="n_iter")
    if batch_size * n_iter > settings.max_batch_images:
        raise InvalidRequest(
            f"batch_size: batch_size x n_iter must be at most {settings.max_batch_images} (max_batch_images)",
            field="batch_size",
        )
    if not math.isfinite(cfg_scale) or not 0 <= cfg_scale <= 100:
        raise InvalidRequest(f"cfg_scale: must be between 0 and 100, got {cfg_scale}", field="cfg_scale")


# -- the last check before a job exists ----------------------------------------------------------


def check_request(
    request: GenerationRequest,
    defaults: ModelDefaults,
    settings: Settings,
    *,
    family: str | None = None,
    weights: int = 0,
    controlnet_weights: int = 0,
    budget: MemoryBudget | None = None,
) -> Passes:
    """Refuse ``request`` unless it and every value derived from it is within ``settings``; the
    passes it will run. ``family``/``weights``: its model's, for the memory estimate (with
    ``controlnet_weights``, its ControlNets' files); ``budget``: what the engine says a job may use
    (``max_job_memory_bytes`` wins when set)."""
    # 1. Text: the prompts' sizes before anything reads them whole, then every text field.
    for field in _PROMPTS:
        check_prompt(_get(request, field), field=field, settings=settings)
    leaves = list(_leaves(request))
    for field, value in leaves:
        if isinstance(value, str):
            check_text(value, field=field, max_bytes=settings.max_prompt_bytes)
    # 2. Numbers.
    for field, value in leaves:
        if isinstance(value, float) and not math.isfinite(value):
            raise InvalidRequest(f"{field}: must be a finite number, got {value}", field=field)
    for field, (low, high) in _INT_RANGES.items():
        value = getattr(request, field)
        if not low <= value <= high:
            raise InvalidRequest(f"{field}: must be between {low} and {high}, got {value}", field=field)
    steps = request.steps or defaults.steps
    check_counts(steps, request.batch_size, request.n_iter, request.cfg_scale, settings)
    # 3. Sizes of every pass.
    shape = passes(request, defaults)
    check_size(shape.first.width, shape.first.height, defaults, settings)
    if shape.hires is not None:
        _check_hires(request, shape, settings)
    _check_seed_resize(request, settings)
    # 4. Steps over all passes; LoRAs.
    _check_steps(shape, settings)
    _check_loras(request, settings)
    # 5. Memory.
    _check_memory(request, shape, settings, family=family, weights=weights,
                  controlnet_weights=controlnet_weights, budget=budget)
    return shape


def check_prompt(text: str, *, field: str, settings: Settings) -> None:
    """A prompt's bytes (413; a string longer in characters than the limit in bytes is refused
    without reading it), then its CLIP tokens (400)."""
    limit = settings.max_prompt_bytes
    if len(text) > limit:
        raise PayloadTooLarge(
            f"{field}: {len(text)} characters, more than the {limit} bytes allowed (max_prompt_bytes)",
            field=field,
        )
    size = len(check_text(text, field=field, max_bytes=limit))
    if size > limit:
        raise PayloadTooLarge(
            f"{field}: {size} bytes as UTF-8, more than the {limit} allowed (max_prompt_bytes)", field=field
        )
    # A CLIP token covers at least one byte: a prompt of fewer bytes than the limit needs no count.
    if size > settings.max_prompt_tokens:
        tokens = count_tokens(text)
        if tokens > settings.max_prompt_tokens:
            raise InvalidRequest(
                f"{field}: {tokens} CLIP tokens, more than the {settings.max_prompt_tokens} allowed "
                "(max_prompt_tokens)",
                field=field,
            )


def check_text(text: str, *, field: str, max_bytes: int | None = None) -> bytes:
    """``text`` as UTF-8, or a 400 naming ``field``: a lone surrogate (half of a UTF-16 pair, as a
    JSON ``"\\ud800"`` decodes) or a NUL is not text any store or client can take; 413 past
    ``max_bytes``."""
    if max_bytes is not None and len(text) > max_bytes:
        raise PayloadTooLarge(f"{field}: more than the {max_bytes} bytes allowed", field=field)
    try:
        data = text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidRequest(
            f"{field}: is not valid Unicode text "
            f"(a lone surrogate {text[exc.start]!a} at position {exc.start})",
            field=field,
        ) from None
    if b"\0" in data:
        raise InvalidRequest(f"{field}: must not contain NUL characters", field=field)
    if max_bytes is not None and len(data) > max_bytes:
        raise PayloadTooLarge(f"{field}: {len(data)} bytes, more than the {max_bytes} allowed", field=field)
    return data


def _check_hires(request: GenerationRequest, shape: Passes, settings: Settings) -> None:
    assert request.hires is not None and shape.hires is not None
    hires = request.hires
    field = "hires.scale" if hires.resize_x <= 0 and hires.resize_y <= 0 else "hires.resize_x"
    if field == "hires.scale":
        how = f"{hires.scale:g} x {shape.first}"
    else:
        how = f"resize to {hires.resize_x}x{hires.resize_y}"
    for what, size in (("the upscale", shape.hires.upscale), ("the final size", shape.hires.final)):
        if size.width <= 0 or size.height <= 0:
            raise InvalidRequest(f"{field}: {what} {size} ({how}) is too small", field=field)
        if max(size.width, size.height) > settings.max_side:
            raise InvalidRequest(
                f"{field}: {what} {size} ({how}) has a side over the {settings.max_side} allowed (max_side)",
                field=field,
            )
        if size.pixels > settings.max_pixels:
            raise InvalidRequest(
                f"{field}: {what} {size} ({how}) is more than the {settings.max_pixels} pixels allowed "
                "(max_pixels)",
                field=field,
            )


def _check_seed_resize(request: GenerationRequest, settings: Settings) -> None:
    w, h = request.seed_resize_from_w, request.seed_resize_from_h
    if w <= 0 or h <= 0:
        return  # off (A1111: either side <= 0)
    field = "seed_resize_from_w" if w >= h else "seed_resize_from_h"
    if max(w, h) > settings.max_side:
        raise InvalidRequest(
            f"{field}: the seed resize {w}x{h} has a side over the {settings.max_side} allowed (max_side)",
            field=field,
        )
    if w * h > settings.max_pixels:
        raise InvalidRequest(
            f"{field}: the seed resize {w}x{h} is more than the {settings.max_pixels} pixels allowed "
            "(max_pixels)",
            field=field,
        )


def _check_steps(shape: Passes, settings: Settings) -> None:
    if shape.hires is not None and not 1 <= shape.hires_steps <= settings.max_steps:
        raise InvalidRequest(
            f"hires.second_pass_steps: must be between 1 and {settings.max_steps} (max_steps), "
            f"got {shape.hires_steps}",
            field="hires.second_pass_steps",
        )
    if shape.total_steps > settings.max_total_steps:
        raise InvalidRequest(
            f"steps: {shape.steps} + {shape.hires_steps} hires steps make {shape.total_steps}, more than the "
            f"{settings.max_total_steps} allowed (max_total_steps)",
            field="steps",
        )


def _check_loras(request: GenerationRequest, settings: Settings) -> None:
    _, networks = extract_networks(request.prompt)
    tagged = [n for n in networks if n.kind in LORA_KINDS]
    count = len(request.loras) + len(tagged)
    if count > settings.max_loras:
        raise InvalidRequest(
            f"loras: {count} LoRAs (listed and <lora:...> in the prompt), more than the {settings.max_loras} "
            "allowed (max_loras)",
            field="loras",
        )
    for network in tagged:
        weights = [*network.positional[1:], *network.named.values()]
        for text in weights:
            try:
                value = float(text)
            except ValueError:
                continue  # not a weight: the engine skips the tag, A1111 errors on it
            if not math.isfinite(value):
                raise InvalidRequest(
                    f"prompt: the weight of <{network.kind}:{network.name[:100]}> must be a finite "
                    f"number, got {text[:100]}",
                    field="prompt",
                )


def _check_memory(
    request: GenerationRequest,
    shape: Passes,
    settings: Settings,
    *,
    family: str | None,
    weights: int,
    controlnet_weights: int = 0,
    budget: MemoryBudget | None,
) -> None:
    value_bytes = budget.value_bytes if budget is not None else 2
    if settings.max_job_memory_bytes is not None:
        limit, where = settings.max_job_memory_bytes, "max_job_memory_bytes"
    elif budget is not None:
        limit, where = budget.bytes, f"{budget.where}; max_job_memory_bytes"
    else:
        return
    need = estimate_job_memory(request, shape, family=family, weights=weights + controlnet_weights,
                               value_bytes=value_bytes)
    if need <= limit:
        return
    largest = shape.largest
    if controlnet_weights and need - controlnet_weights <= limit:  # it fits without its ControlNets
        raise InvalidRequest(
            f"controlnets: this job needs about {need / GIB:.1f} GiB, {controlnet_weights / GIB:.1f} GiB of "
            f"them its ControlNets' weights, more than the {limit / GIB:.1f} GiB one job may use ({where}): "
            "use fewer or smaller ControlNets",
            field="controlnets",
        )
    field = "batch_size" if request.batch_size > 1 else _size_field(shape, largest)
    raise InvalidRequest(
        f"{field}: this job needs about {need / GIB:.1f} GiB ({request.batch_size} x {largest}), more than "
        f"the {limit / GIB:.1f} GiB one job may use ({where}): lower batch_size or the size",
        field=field,
    )


def _size_field(shape: Passes, largest: Size) -> str:
    return "width" if shape.hires is None or largest == shape.first else "hires"


# -- ControlNet ----------------------------------------------------------------------------------

# A1111's ControlNet extension shows models as "name [hash]"; clients send either form.
_HASH_SUFFIX = re.compile(r"\s*\[[0-9a-fA-F]{6,64}\]\s*$")
# A ControlNet's cross-attention width tells the family it was trained for.
_CONTEXT_FAMILIES = {768: "sd1", 1024: "sd2", 2048: "sdxl"}


def controlnet_name(value: str) -> str:
    """A ControlNet model name as a client sends it, without its `` [hash]`` suffix."""
    return _HASH_SUFFIX.sub("", value).strip().replace("\\", "/")


def find_controlnet(files: Sequence[AssetFile], name: str) -> AssetFile | None:
    """The ControlNet file ``name`` means: its stem (the catalog's name), its relative path with or
    without the extension, any of them with a `` [hash]`` suffix; exact first, then in any case."""
    wanted = controlnet_name(name)
    if not wanted:
        return None

    def keys(f: AssetFile) -> set[str]:
        return {f.name, f.relpath, str(Path(f.relpath).with_suffix("").as_posix())}

    found = next((f for f in files if wanted in keys(f)), None)
    if found is None:
        folded = wanted.casefold()
        found = next((f for f in files if folded in {k.casefold() for k in keys(f)}), None)
    return found


def controlnet_family(path: Path) -> str | None:
    """sd1 / sd2 / sdxl from a ControlNet's cross-attention width (a diffusers folder's config, a
    safetensors file's header); None when unknown (another format, no attention layer, unreadable)."""
    if path.is_dir():
        try:
            width = json.loads((path / "config.json").read_text(encoding="utf-8")).get("cross_attention_dim")
        except (OSError, ValueError, AttributeError):
            return None
        return _CONTEXT_FAMILIES.get(width) if isinstance(width, int) else None
    if path.suffix.lower() != ".safetensors":
        return None
    try:
        shapes = read_safetensors_shapes(path)
    except (OSError, ValueError):
        return None
    for key, shape in shapes.items():
        if key.endswith("attn2.to_k.weight") and len(shape) == 2:
            return _CONTEXT_FAMILIES.get(shape[1])
    return None


def check_controlnet_count(count: int, settings: Settings, *, field: str) -> None:
    if count > settings.max_controlnets:
        raise InvalidRequest(
            f"{field}: {count} ControlNet units, more than the {settings.max_controlnets} allowed "
            "(max_controlnets)",
            field=field,
        )


# -- metadata ------------------------------------------------------------------------------------


def check_metadata(metadata: Any, settings: Settings, *, field: str = "metadata") -> None:
    """A job's metadata: an object of JSON values at most ``max_metadata_depth`` deep, valid text,
    finite numbers, and at most ``max_metadata_bytes`` as JSON (413). Walked without recursion,
    stopping at the first problem, so a hostile document costs no more than its limit."""
    if metadata is None:
        return
    if not isinstance(metadata, dict):
        raise InvalidRequest(f"{field}: must be an object", field=field)
    max_depth, max_bytes = settings.max_metadata_depth, settings.max_metadata_bytes
    seen = 0  # bytes of JSON so far, never more than the document's: past the limit, refuse at once
    stack: list[tuple[Any, int, str]] = [(metadata, 1, field)]
    while stack:
        value, depth, path = stack.pop()
        if isinstance(value, dict | list):
            if depth > max_depth:
                raise InvalidRequest(
                    f"{field}: nested more than the {max_depth} levels allowed (max_metadata_depth), "
                    f"at {path}",
                    field=field,
                )
            seen += 2
            items = value.items() if isinstance(value, dict) else enumerate(value)
            for key, item in items:
                if isinstance(value, dict):
                    if not isinstance(key, str):
                        kind = type(key).__name__
                        raise InvalidRequest(f"{field}: keys must be text, got {kind}", field=field)
                    seen += len(check_text(key, field=field)) + 3
                    where = f"{path}.{key[:40]}"
                else:
                    where = f"{path}[{key}]"
                stack.append((item, depth + 1, where))
        elif isinstance(value, str):
            seen += len(check_text(value, field=field)) + 2
        elif isinstance(value, bool) or value is None:
            seen += 4
        elif isinstance(value, int):
            if not -(2**63) <= value <= MAX_SEED:
                raise InvalidRequest(f"{field}: {path} is out of range for a 64-bit integer", field=field)
            seen += 1
        elif isinstance(value, float):
            if not math.isfinite(value):
                raise InvalidRequest(f"{field}: {path} must be a finite number, got {value}", field=field)
            seen += 1
        else:
            raise InvalidRequest(f"{field}: {path} is not a JSON value ({type(value).__name__})", field=field)
        if seen > max_bytes:
            raise PayloadTooLarge(
                f"{field}: more than the {max_bytes} bytes allowed as JSON (max_metadata_bytes)", field=field
            )
    size = len(json.dumps(metadata, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode())
    if size > max_bytes:
        raise PayloadTooLarge(
            f"{field}: {size} bytes as JSON, more than the {max_bytes} allowed (max_metadata_bytes)",
            field=field,
        )


# -- helpers -------------------------------------------------------------------------------------


def _get(request: GenerationRequest, field: str) -> str:
    head, _, tail = field.partition(".")
    if not tail:
        return str(getattr(request, head))
    inner = getattr(request, head)
    return "" if inner is None else str(getattr(inner, tail))


def _leaves(model: BaseModel, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """(field path, value) of every scalar in ``model``: ``hires.scale``, ``loras[0].te_weight``."""
    for name in type(model).model_fields:
        value = getattr(model, name)
        path = f"{prefix}{name}"
        if isinstance(value, BaseModel):
            yield from _leaves(value, f"{path}.")
        elif isinstance(value, tuple | list):
            for i, item in enumerate(value):
                if isinstance(item, BaseModel):
                    yield from _leaves(item, f"{path}[{i}].")
                else:
                    yield f"{path}[{i}]", item
        else:
            yield path, value
