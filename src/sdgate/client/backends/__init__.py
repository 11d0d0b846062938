"""Backends: one per service, all behind the same interface (``_base.Backend``).

``resolve_backend`` picks one from a URL: an explicit ``kind+`` scheme prefix
(``a1111+http://host:7860``, ``comfyui+http://host:8188``, ``stability+https://api.stability.ai``,
``openai+https://api.openai.com``, ``hf+https://router.huggingface.co/hf-inference/models/ID``,
``sdgate+http://...``), else the URL itself (``/sdapi/v1`` -> A1111, Stability/OpenAI/Hugging Face
hosts, port 8188 -> ComfyUI), else sdgate's native API.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from sdgate.client._exceptions import ConfigurationError
from sdgate.client.backends._base import Backend, Context
from sdgate.client.backends.a1111 import A1111Backend
from sdgate.client.backends.comfyui import ComfyUIBackend
from sdgate.client.backends.huggingface import HuggingFaceBackend
from sdgate.client.backends.native import NativeBackend
from sdgate.client.backends.openai import OpenAIBackend
from sdgate.client.backends.stability import StabilityBackend, StabilityV2Backend

KINDS: dict[str, type[Backend]] = {
    "sdgate": NativeBackend,
    "native": NativeBackend,
    "a1111": A1111Backend,
    "automatic1111": A1111Backend,
    "comfyui": ComfyUIBackend,
    "comfy": ComfyUIBackend,
    "stability": StabilityBackend,
    "stability-v1": StabilityBackend,
    "stability-v2beta": StabilityV2Backend,
    "stability-v2": StabilityV2Backend,
    "openai": OpenAIBackend,
    "hf": HuggingFaceBackend,
    "huggingface": HuggingFaceBackend,
}


def guess_kind(url: str) -> str:
    parts = urlsplit(url)
    host, path = (parts.hostname or "").lower(), parts.path.rstrip("/")
    if path.endswith("/sdapi/v1"):
        return "a1111"
    if "/v2beta" in path:
        return "stability-v2beta"
    if host.endswith("stability.ai") or "/v1/generation" in path:
        return "stability"
    if host.endswith("openai.com") or path.endswith("/v1/images"):
        return "openai"
    if "huggingface" in host or "/models/" in path:
        return "hf"
    if parts.port == 8188:
        return "comfyui"
    return "sdgate"


def resolve_backend(spec: str | Backend, *, kind: str | None = None, **options: Any) -> Backend:
    """A backend from a URL (with an optional ``kind+`` prefix) or an explicit ``kind``."""
    if isinstance(spec, Backend):
        return spec
    url = spec.strip()
    scheme, sep, rest = url.partition("://")
    if sep and "+" in scheme:
        prefix, _, real = scheme.partition("+")
        kind = kind or prefix
        url = f"{real}://{rest}"
    chosen = (kind or guess_kind(url)).lower()
    if chosen not in KINDS:
        raise ConfigurationError(f"unknown backend kind {chosen!r}: one of {', '.join(sorted(set(KINDS)))}")
    return KINDS[chosen](url, **options)


__all__ = [
    "A1111Backend",
    "Backend",
    "ComfyUIBackend",
    "Context",
    "HuggingFaceBackend",
    "KINDS",
    "NativeBackend",
    "OpenAIBackend",
    "StabilityBackend",
    "StabilityV2Backend",
    "guess_kind",
    "resolve_backend",
]
