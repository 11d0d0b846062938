"""Request checks shared by every dialect: seeds, sizes and counts against the model and the limits."""

from __future__ import annotations

import math
import secrets

from sdgate.core.engine import ModelDefaults
from sdgate.core.errors import InvalidRequest
from sdgate.core.requests import MAX_SEED
from sdgate.settings import Settings

# A1111 draws random seeds from [0, 4294967294].
RANDOM_SEED_BOUND = 4294967295


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
                f"{name}: must be between {factor} and {settings.max_side}, got {value}", field=name
            )
        if value % factor:
            raise InvalidRequest(
                f"{name}: must be a multiple of {factor} for model {defaults.name}, got {value}", field=name
            )
    if width * height > settings.max_pixels:
        raise InvalidRequest(
            f"width: {width}x{height} is more than the {settings.max_pixels} pixels allowed", field="width"
        )


def check_counts(steps: int, batch_size: int, n_iter: int, cfg_scale: float, settings: Settings) -> None:
    if not 1 <= steps <= settings.max_steps:
        raise InvalidRequest(f"steps: must be between 1 and {settings.max_steps}, got {steps}", field="steps")
    if batch_size < 1:
        raise InvalidRequest(f"batch_size: must be at least 1, got {batch_size}", field="batch_size")
    if n_iter < 1:
        raise InvalidRequest(f"n_iter: must be at least 1, got {n_iter}", field="n_iter")
    if batch_size * n_iter > settings.max_batch_images:
        raise InvalidRequest(
            f"batch_size: batch_size x n_iter must be at most {settings.max_batch_images}",
            field="batch_size",
        )
    if not math.isfinite(cfg_scale) or not 0 <= cfg_scale <= 100:
        raise InvalidRequest(f"cfg_scale: must be between 0 and 100, got {cfg_scale}", field="cfg_scale")
