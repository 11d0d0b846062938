"""Upscaler names every layer agrees on (torch-free), and the check that a name exists.

An upscaler is one of the built-in three (no model file), a latent mode (hires fix only), or a
model file in the models folder's upscaler folders (``catalog.list_files("esrgan")``, loaded by
the engine through spandrel). The check runs before a job exists, so an unknown name is refused
at submit instead of failing the job later.
"""

from __future__ import annotations

from typing import Protocol

from sdgate.core.errors import InvalidRequest

BUILTIN_UPSCALERS: tuple[str, ...] = ("None", "Lanczos", "Nearest")
LATENT_UPSCALE_MODES: tuple[str, ...] = (
    "Latent",
    "Latent (antialiased)",
    "Latent (bicubic)",
    "Latent (bicubic antialiased)",
    "Latent (nearest)",
    "Latent (nearest-exact)",
)


class _NamedFile(Protocol):
    name: str


class _Catalog(Protocol):
    def list_files(self, kind: str) -> list[_NamedFile]: ...


def upscaler_names(catalog: _Catalog, *, latent: bool) -> list[str]:
    """Every name this server answers to, built-ins first (A1111's order)."""
    names = [*BUILTIN_UPSCALERS, *(f.name for f in catalog.list_files("esrgan"))]
    return [*LATENT_UPSCALE_MODES, *names] if latent else names


def check_upscaler(name: str, catalog: _Catalog, *, field: str, latent: bool) -> None:
    if name in ("", *BUILTIN_UPSCALERS) or (latent and name in LATENT_UPSCALE_MODES):
        return
    known = upscaler_names(catalog, latent=latent)
    if name not in known:
        raise InvalidRequest(f"{field}: unknown upscaler {name!r} (known: {', '.join(known)})", field=field)
