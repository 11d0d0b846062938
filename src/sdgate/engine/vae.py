"""External VAE files, swapped into a loaded model for one job (A1111's ``sd_vae``).

A VAE file holds only the autoencoder, in the original (LDM) key layout (``encoder.down.0.block.0``,
possibly under ``first_stage_model.``) or in diffusers' (``encoder.down_blocks.0.resnets.0``). The
file says nothing about its architecture or latent scaling, so it is built with the model's own VAE
config and checked tensor by tensor against it. Loaded VAEs stay in a small LRU keyed by path.

The swap exchanges the *children* (encoder, decoder, quant convs) of the model's own VAE module,
not the module: every pipeline built over the model's components (img2img, inpaint, hires
variants) shares that one module, so all of them decode with the external VAE during the job, and
all get their own weights back afterwards, bit for bit.
"""

from __future__ import annotations

import json
import logging
import threading
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL
from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

from sdgate.core.errors import InvalidRequest
from sdgate.core.models import AssetFile, ModelCatalog
from sdgate.engine.loading import StateDict, UnsupportedModel, materialize, read_state_dict

log = logging.getLogger("sdgate.engine")

CACHE_SIZE = 2  # A1111's sd_vae_checkpoint_cache is 0; two keeps an A/B comparison cheap


@dataclass(frozen=True)
class ExternalVae:
    name: str  # the file name, as A1111's infotext and /sd-vae show it
    short_hash: str  # first 10 hex digits of the file's sha256
    module: Any  # an AutoencoderKL built with the model's VAE config


def to_diffusers_layout(state: StateDict, config: dict[str, Any]) -> StateDict:
    """A VAE state dict in either layout, with diffusers' key names."""
    if any(k.startswith(("encoder.down_blocks.", "decoder.up_blocks.")) for k in state):
        return state
    if any(".encoder.down." in f".{k}" or ".decoder.up." in f".{k}" for k in state):
        try:
            return convert_ldm_vae_checkpoint(state, config)  # type: ignore[no-any-return]
        except (KeyError, ValueError, RuntimeError) as exc:  # a partial or odd LDM file
            raise UnsupportedModel(f"its LDM keys do not convert ({exc.__class__.__name__}: {exc})") from exc
    raise UnsupportedModel("holds no VAE encoder/decoder tensors")


def build_vae(state: StateDict, like: Any, device: torch.device) -> Any:
    """An ``AutoencoderKL`` shaped like the model's VAE ``like`` (its dtype), holding ``state``."""
    config = dict(like.config)
    converted = to_diffusers_layout(state, config)
    vae = materialize(lambda: AutoencoderKL.from_config(config), converted, "the VAE file", like.dtype)
    return vae.to(device).eval()


class VaeCache:
    """The last few external VAEs, by file (and by the config and dtype they were built for)."""

    def __init__(self, size: int = CACHE_SIZE) -> None:
        self.size = size
        self._entries: OrderedDict[tuple[str, ...], Any] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, path: Path, like: Any, device: torch.device) -> Any:
        stat = path.stat()
        config = json.dumps(dict(like.config), sort_keys=True, default=str)
        key = (str(path), str(stat.st_mtime_ns), str(stat.st_size), config, str(like.dtype), str(device))
        with self._lock:
            if key in self._entries:
                self._entries.move_to_end(key)
                return self._entries[key]
        log.info("loading VAE %s", path.name)
        vae = build_vae(read_state_dict(path), like, device)
        with self._lock:
            self._entries[key] = vae
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)
        return vae

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


def load_external(
    catalog: ModelCatalog, cache: VaeCache, file: AssetFile, like: Any, device: torch.device
) -> ExternalVae:
    """``file`` built for the model whose VAE is ``like``; a file that does not fit: a 400."""
    try:
        module = cache.get(file.path, like, device)
    except (UnsupportedModel, OSError) as exc:
        raise InvalidRequest(f"vae: {file.name} cannot be used with this model: {exc}", field="vae") from exc
    return ExternalVae(file.name, catalog.file_sha256(file.path)[:10], module)


@contextmanager
def swapped_in(own: Any, external: ExternalVae | None) -> Iterator[None]:
    """Inside the block the model's VAE module ``own`` computes with ``external``'s weights."""
    if external is None:
        yield
        return
    originals = dict(own.named_children())
    for name, child in external.module.named_children():
        setattr(own, name, child)
    try:
        yield
    finally:
        for name, child in originals.items():
            setattr(own, name, child)
