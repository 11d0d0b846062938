"""The one table of other services' model names (Stability engine ids, OpenAI models, HF repo ids).

A client of another service sends the names it knows (``stable-diffusion-v1-6``, ``dall-e-3``,
``stabilityai/stable-diffusion-xl-base-1.0``). Resolution, in order:

1. an exact catalog match wins (a user may name a checkpoint ``sd3`` or ``dall-e-3``);
2. a known alias means a model of its family (SD 1.x, 2.x, SDXL) if one is installed, else the
   default model;
3. anything else means the default model (logged once per name), unless ``strict_models`` is set:
   then ``ModelNotFound``, which each dialect renders as its own 404.

Their responses say which model ran in an ``X-Sdgate-Model`` header (``model_header``): OpenAI's
and Stability's bodies have no field for it and Hugging Face answers with bare image bytes. The
native API and the SDK never map names: an unknown one there is a 404 (``dialects/native/names.py``).
"""

from __future__ import annotations

import logging
import re
from urllib.parse import quote

from sdgate.core.errors import ModelNotFound
from sdgate.core.jobs import Job
from sdgate.core.models import Family, ModelCatalog, ModelInfo
from sdgate.server.logs import LogOnce
from sdgate.settings import Settings

log = logging.getLogger("sdgate.models")

# name (case-folded) -> the family it means; None: no family of ours fits, so the default model.
ALIASES: dict[str, Family | None] = {
    # Stability v1 engines (GET /v1/engines/list and the public examples).
    "stable-diffusion-v1-5": "sd1",
    "stable-diffusion-v1-6": "sd1",
    "stable-diffusion-512-v2-0": "sd2",
    "stable-diffusion-512-v2-1": "sd2",
    "stable-diffusion-768-v2-0": "sd2",
    "stable-diffusion-768-v2-1": "sd2",
    "stable-diffusion-xl-beta-v2-2-2": "sdxl",
    "stable-diffusion-xl-1024-v0-9": "sdxl",
    "stable-diffusion-xl-1024-v1-0": "sdxl",
    "stable-inpainting-v1-0": "sd1",
    "stable-inpainting-512-v2-0": "sd2",
    "esrgan-v1-x2plus": None,
    "stable-diffusion-x4-latent-upscaler": None,
    # Stability v2beta services and sd3 models: the closest we run is SDXL.
    "core": "sdxl",
    "ultra": "sdxl",
    "sd3": "sdxl",
    "sd3-large": "sdxl",
    "sd3-large-turbo": "sdxl",
    "sd3-medium": "sdxl",
    "sd3.5-large": "sdxl",
    "sd3.5-large-turbo": "sdxl",
    "sd3.5-medium": "sdxl",
    "sd3.5-flash": "sdxl",
    # OpenAI image models.
    "dall-e-2": None,
    "dall-e-3": "sdxl",
    "gpt-image-1": "sdxl",
    "gpt-image-1-mini": "sdxl",
    "gpt-image-1.5": "sdxl",
    "gpt-image-2": "sdxl",
}

# Hugging Face repo ids (anything with a "/"): the family from well-known repo names.
_REPO_FAMILIES: tuple[tuple[re.Pattern[str], Family], ...] = (
    (re.compile(r"(xl|sdxl|playground-v2|stable-diffusion-3|sd3|flux)", re.I), "sdxl"),
    (re.compile(r"stable-diffusion-2|sd-?2|stable-diffusion-v2", re.I), "sd2"),
    (re.compile(r"stable-diffusion-v1|sd-?1|v1-5|dreamshaper|realistic_vision|openjourney", re.I), "sd1"),
)

_unknown_model = LogOnce(log, "%s: unknown model %r; using the default model %s")

MODEL_HEADER = "X-Sdgate-Model"
# Printable ASCII passes as is; anything else is percent-encoded (header values are latin-1).
_HEADER_SAFE = "".join(chr(c) for c in range(0x20, 0x7F) if chr(c) != "%")


def alias_family(name: str) -> tuple[bool, Family | None]:
    """(known, family) for another service's model name."""
    key = name.strip().casefold()
    if key in ALIASES:
        return True, ALIASES[key]
    if "/" in key:
        for pattern, family in _REPO_FAMILIES:
            if pattern.search(key):
                return True, family
    return False, None


def resolve_model(catalog: ModelCatalog, settings: Settings, name: str | None, *, dialect: str) -> ModelInfo:
    """The model another service's ``name`` means here (see the module docstring)."""
    if name is None or not name.strip():
        return catalog.default
    known, family = alias_family(name)
    if known:
        # No rescan for a known alias: it would run on every request of a client that always
        # sends ``dall-e-3``. A checkpoint literally named like the alias still wins.
        wanted = name.strip().casefold()
        for info in catalog.list():
            if wanted in (info.name.casefold(), info.stem.casefold(), info.relpath.casefold()):
                return info
        return _of_family(catalog, family)
    try:
        return catalog.resolve(name)
    except ModelNotFound:
        if settings.strict_models:
            raise
    _unknown_model.once(name, dialect, name, catalog.default.name)
    return catalog.default


def _of_family(catalog: ModelCatalog, family: Family | None) -> ModelInfo:
    default = catalog.default
    if family is None or default.family == family:
        return default
    for info in catalog.list():
        if info.family == family:
            return info
    return default


def model_header(job: Job) -> dict[str, str]:
    """``{"X-Sdgate-Model": name}`` of the model that ran ``job`` ({} before it has a result)."""
    name = job.result.model_name if job.result is not None else None
    return {MODEL_HEADER: quote(name, safe=_HEADER_SAFE)} if name else {}
