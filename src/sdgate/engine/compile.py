"""Compiled execution (``--compile``): the UNet and the VAE decoder under ``torch.compile`` for a
few static shape buckets, eager for everything else.

What a loaded model gets when ``settings.compile`` is on (``prepare``):

1. Fused QKV projections in the UNet's attention, channels_last weights on CUDA (SDPA is diffusers'
   default processor already).
2. Its UNet and VAE decoder ``forward`` replaced by a ``_Dispatch``: a call whose signature (input
   shapes, dtypes, grad mode, padding, extra inputs) was seen while warming up runs the compiled
   function; any other call (a size or batch outside the buckets, a ControlNet residual, seamless
   tiling, a long prompt) runs the module's own eager forward. Nothing compiles while a job runs.
3. A warm-up at load: one short pipeline call and a decode per bucket of ``--warmup`` (CUDA graphs
   are recorded there), with inductor's caches and ``torch.compiler``'s cache artefacts on disk
   under ``compile_cache_dir`` so a restart skips code generation.

Stale graphs: the compiled functions take the module's parameters as graph inputs (inductor's
``freezing`` is off, checked here), so weights patched in place (LoRA, ``engine.lora``) are what the
next call reads; CUDA graphs keep the same parameter storage, so they read them too. The fused QKV
weights are copies: ``_FusedQkv.sync`` re-copies them before a UNet call whenever a source weight's
version counter moved. A different model is another module with its own dispatcher; an evicted model
gets its own ``forward`` back (``release``).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from sdgate.settings import Settings

log = logging.getLogger("sdgate.engine")

_BUCKET = re.compile(r"^\s*(\d+)\s*x\s*(\d+)\s*:\s*(\d+(?:\s*,\s*\d+)*)\s*$")
MAX_BUCKET_SIDE = 8192
MAX_BUCKET_BATCH = 64
WARMUP_STEPS = 3  # the first call compiles, the next ones record and replay the CUDA graph
_RECOMPILE_LIMIT = 256  # compiled variants per code object: every bucket of every loaded model


class WarmupError(ValueError):
    """``--warmup`` text that does not parse."""


@dataclass(frozen=True, order=True)
class Bucket:
    width: int
    height: int
    batch: int  # images per pipeline call (the UNet sees twice as many with CFG)


def parse_warmup(text: str) -> tuple[Bucket, ...]:
    """``"512x512:1,4,8;768x768:1"`` -> buckets (width, height, batch); ``""`` -> none."""
    buckets: list[Bucket] = []
    for part in text.split(";"):
        if not part.strip():
            continue
        match = _BUCKET.match(part)
        if match is None:
            raise WarmupError(
                f"--warmup: cannot read {part.strip()!r}; write WIDTHxHEIGHT:BATCH[,BATCH...] groups "
                'separated by ";", e.g. "512x512:1,4,8;768x768:1"'
            )
        width, height = int(match[1]), int(match[2])
        if not (8 <= width <= MAX_BUCKET_SIDE and 8 <= height <= MAX_BUCKET_SIDE) or width % 8 or height % 8:
            raise WarmupError(
                f"--warmup: {width}x{height}: sides must be multiples of 8 up to {MAX_BUCKET_SIDE}"
            )
        for batch in match[3].split(","):
            size = int(batch)
            if not 1 <= size <= MAX_BUCKET_BATCH:
                raise WarmupError(f"--warmup: batch {size} in {part.strip()!r} is not 1..{MAX_BUCKET_BATCH}")
            buckets.append(Bucket(width, height, size))
    return tuple(sorted(set(buckets)))


def check_settings(settings: Settings) -> None:
    """Fail at start, not at the first model load, on a ``--warmup`` that does not parse."""
    parse_warmup(settings.warmup)


def cache_dir(settings: Settings) -> Path:
    return settings.compile_cache_dir or settings.data_dir / "compile-cache"


def use_cache_dir(path: Path) -> None:
    """Point inductor's on-disk caches (triton's kernels live under them) at ``path``.

    Set unconditionally: torch writes its default into ``TORCHINDUCTOR_CACHE_DIR`` the first time
    it asks, so an existing value does not mean the user chose it; ``--compile-cache-dir`` does."""
    path.mkdir(parents=True, exist_ok=True)
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str((path / "inductor").resolve())
    import torch._inductor.config as inductor_config

    inductor_config.fx_graph_cache = True
    if inductor_config.freezing:  # frozen graphs bake the weights in: LoRA patches would not show
        log.warning("torch._inductor.config.freezing is on; turning it off (weights change under LoRA)")
        inductor_config.freezing = False


# --- keeping fused QKV weights in step with their sources -----------------------------------------


class _FusedQkv:
    """The UNet's fused projections (``to_qkv``, ``to_kv``) as copies of the separate ones that
    LoRA patching writes to; ``sync`` re-copies those whose sources changed since the last copy."""

    def __init__(self, unet: torch.nn.Module) -> None:
        self.pairs: list[tuple[torch.nn.Linear, list[torch.nn.Linear]]] = []
        for module in unet.modules():
            if not getattr(module, "fused_projections", False):
                continue
            if isinstance(getattr(module, "to_qkv", None), torch.nn.Linear):
                self.pairs.append((module.to_qkv, [module.to_q, module.to_k, module.to_v]))
            elif isinstance(getattr(module, "to_kv", None), torch.nn.Linear):
                self.pairs.append((module.to_kv, [module.to_k, module.to_v]))
        self.versions = [self._versions(sources) for _, sources in self.pairs]

    @staticmethod
    def _versions(sources: list[torch.nn.Linear]) -> tuple[int, ...]:
        return tuple(t._version for s in sources for t in (s.weight, s.bias) if t is not None)

    def sync(self) -> int:
        """Copy changed sources into their fused weights; returns how many were refreshed."""
        refreshed = 0
        for i, (fused, sources) in enumerate(self.pairs):
            now = self._versions(sources)
            if now == self.versions[i]:
                continue
            with torch.no_grad():
                fused.weight.copy_(torch.cat([s.weight for s in sources]))
                if fused.bias is not None:
                    fused.bias.copy_(torch.cat([s.bias for s in sources]))
            self.versions[i] = now
            refreshed += 1
        return refreshed


def unfuse_qkv(unet: Any) -> None:
    """The separate projections again (the processors they had), without the fused copies."""
    unet.unfuse_qkv_projections()
    for module in unet.modules():
        if getattr(module, "fused_projections", False):
            for name in ("to_qkv", "to_kv", "to_added_qkv"):
                if hasattr(module, name):
                    delattr(module, name)
            module.fused_projections = False


def fuse_qkv(unet: Any) -> _FusedQkv | None:
    """Fuse the UNet's attention projections where diffusers can; None where it cannot."""
    fuse = getattr(unet, "fuse_qkv_projections", None)
    if fuse is None:
        return None
    try:
        fuse()
    except ValueError as exc:  # added KV projections (not in SD 1/2/XL)
        log.info("not fusing QKV projections: %s", exc)
        return None
    return _FusedQkv(unet)


# --- dispatch: compiled for warmed signatures, eager otherwise -------------------------------------

_UNET_OPTIONAL = (
    "timestep_cond",
    "attention_mask",
    "cross_attention_kwargs",
    "down_block_additional_residuals",
    "mid_block_additional_residual",
    "down_intrablock_additional_residuals",
    "encoder_attention_mask",
)


def _tensor_key(t: torch.Tensor) -> tuple[Any, ...]:
    return (tuple(t.shape), t.dtype, t.device, t.is_contiguous(memory_format=torch.channels_last))


def _modes() -> tuple[bool, bool]:
    return torch.is_grad_enabled(), torch.is_inference_mode_enabled()


@dataclass
class _Dispatch:
    """A module's ``forward`` replacement: ``compiled`` for the signatures seen while ``warming``,
    ``eager`` (the module's own forward) for everything else."""

    eager: Callable[..., Any]
    compiled: Callable[..., Any]
    signature: Callable[..., tuple[Any, ...] | None]  # None: never compiled (extra inputs, tiling)
    prepare: Callable[[], object] | None = None  # before every call (fused QKV sync)
    graphs: bool = False  # CUDA graphs: outputs live in a pool the next replay overwrites
    warming: bool = False
    signatures: set[tuple[Any, ...]] = field(default_factory=set)
    compiled_calls: int = 0
    eager_calls: int = 0

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.prepare is not None:
            self.prepare()
        key = self.signature(*args, **kwargs)
        if key is not None and (key in self.signatures or self.warming):
            self.signatures.add(key)
            self.compiled_calls += 1
            if not self.graphs:
                return self.compiled(*args, **kwargs)
            torch.compiler.cudagraph_mark_step_begin()  # each call is a step of its own
            return _owned(self.compiled(*args, **kwargs))
        self.eager_calls += 1
        return self.eager(*args, **kwargs)


def _owned(out: Any) -> Any:
    """A CUDA-graph call's outputs as tensors of the caller's own (a hook or a scheduler may still
    hold them when the graph replays); what comes back is the UNet's tuple or output class or the
    decoder's tensor."""
    if isinstance(out, torch.Tensor):
        return out.clone()
    if isinstance(out, tuple):
        return tuple(_owned(x) for x in out)
    sample = getattr(out, "sample", None)
    if isinstance(sample, torch.Tensor):
        return type(out)(sample=sample.clone())
    return out


def _unet_signature(unet: Any) -> Callable[..., tuple[Any, ...] | None]:
    def signature(
        sample: Any, timestep: Any, encoder_hidden_states: Any = None, *rest: Any, **kw: Any
    ) -> Any:
        tensors = isinstance(sample, torch.Tensor) and isinstance(encoder_hidden_states, torch.Tensor)
        if rest or not tensors:
            return None
        if any(kw.get(name) is not None for name in _UNET_OPTIONAL):
            return None  # ControlNet residuals, masks, attention kwargs: rare, eager
        added = kw.get("added_cond_kwargs") or {}
        if not all(isinstance(v, torch.Tensor) for v in added.values()):
            return None
        steps = tuple(timestep.shape) if isinstance(timestep, torch.Tensor) else ()
        if len(steps) > 1:
            return None
        return (
            _tensor_key(sample),
            _tensor_key(encoder_hidden_states),
            tuple((k, _tensor_key(v)) for k, v in sorted(added.items())),
            steps,  # its dtype and device do not matter: ``_float_timestep`` makes it float32 there
            kw.get("return_dict", True),
            unet.conv_in.padding_mode,  # seamless tiling switches it to circular
            _modes(),
        )

    return signature


def _float_timestep(compiled: Callable[..., Any]) -> Callable[..., Any]:
    """The compiled UNet with the timestep as a float32 tensor on the sample's device: schedulers
    pass int64 (DPM++), float32 (Euler) or a number, and the UNet's embedding casts it to float
    anyway (exact below 2**24), so one compiled graph serves them all."""

    def call(sample: Any, timestep: Any, encoder_hidden_states: Any = None, **kw: Any) -> Any:
        t = torch.as_tensor(timestep, device=sample.device).to(torch.float32)
        return compiled(sample, t, encoder_hidden_states, **kw)

    return call


def _decoder_signature(decoder: Any) -> Callable[..., tuple[Any, ...] | None]:
    def signature(sample: Any, latent_embeds: Any = None, *rest: Any, **kw: Any) -> Any:
        if rest or kw or latent_embeds is not None or not isinstance(sample, torch.Tensor):
            return None
        return (_tensor_key(sample), decoder.conv_in.padding_mode, _modes())

    return signature


# --- the compiled model -----------------------------------------------------------------------------


@dataclass
class CompiledModel:
    """What ``prepare`` attached to one loaded pipeline's modules."""

    buckets: tuple[Bucket, ...]
    unet: _Dispatch | None = None
    decoder: _Dispatch | None = None
    qkv: _FusedQkv | None = None
    warmup_seconds: float = 0.0
    _modules: list[torch.nn.Module] = field(default_factory=list)

    def release(self) -> None:
        """Give every module its own forward back (the compiled functions go with the dispatchers)."""
        for module in self._modules:
            module.__dict__.pop("forward", None)
        if self.qkv is not None and self._modules:  # nothing would keep the copies in step any more
            unfuse_qkv(self._modules[0])
        self._modules.clear()
        self.unet = self.decoder = None
        self.qkv = None


_COMPILED: weakref.WeakKeyDictionary[Any, CompiledModel] = weakref.WeakKeyDictionary()  # by UNet module


def compiled_for(pipe: Any) -> CompiledModel | None:
    unet = getattr(pipe, "unet", None)
    return None if unet is None else _COMPILED.get(unet)


def release(pipe: Any) -> None:
    """An evicted (or replaced) model drops its compiled functions."""
    unet = getattr(pipe, "unet", None)
    model = None if unet is None else _COMPILED.pop(unet, None)
    if model is not None:
        model.release()


def _graphs(device: torch.device, backend: object) -> bool:
    return device.type == "cuda" and backend in (None, "inductor")


def _compile(fn: Callable[..., Any], device: torch.device, backend: Any) -> Callable[..., Any]:
    if backend not in (None, "inductor"):
        return torch.compile(fn, backend=backend, dynamic=False)
    # reduce-overhead: CUDA graphs, the launch-bound batch-1 win (docs: ~6x at 512x512 batch 1).
    mode = "reduce-overhead" if _graphs(device, backend) else None
    return torch.compile(fn, mode=mode, dynamic=False)


def _dispatch(
    module: torch.nn.Module,
    signature: Callable[..., tuple[Any, ...] | None],
    device: torch.device,
    backend: Any,
    prepare: Callable[[], object] | None = None,
    adapt: Callable[[Callable[..., Any]], Callable[..., Any]] | None = None,
) -> _Dispatch:
    eager = module.forward  # the class's forward, bound: instance attributes below shadow it
    compiled = _compile(eager, device, backend)
    dispatch = _Dispatch(
        eager, adapt(compiled) if adapt else compiled, signature, prepare, _graphs(device, backend)
    )
    module.forward = dispatch  # type: ignore[method-assign]
    return dispatch


def _offloaded(pipe: Any) -> bool:
    return any(getattr(getattr(pipe, n, None), "_hf_hook", None) is not None for n in ("unet", "vae"))


def prepare(
    loaded: Any,
    settings: Settings,
    device: torch.device,
    *,
    buckets: tuple[Bucket, ...] | None = None,
    backend: str | Callable[..., Any] | None = None,
) -> CompiledModel | None:
    """Optimise and compile ``loaded`` (a ``LoadedPipeline``) when ``settings.compile`` is on, then
    warm every bucket up. ``backend``: a ``torch.compile`` backend other than inductor (tests)."""
    pipe = loaded.pipeline
    if not settings.compile or pipe is None:
        return None
    if _offloaded(pipe):
        log.warning("not compiling: the model is offloaded (--vram-mode); it runs eager")
        return None
    release(pipe)
    if buckets is None:
        buckets = parse_warmup(settings.warmup) or (Bucket(loaded.native_size, loaded.native_size, 1),)
    if backend in (None, "inductor"):
        use_cache_dir(cache_dir(settings))
    _raise_recompile_limit()
    unet, vae = pipe.unet, pipe.vae
    if device.type == "cuda":  # conv-heavy: 1.0-1.27x on CUDA; on the CPU it is not reliably faster
        unet.to(memory_format=torch.channels_last)
        vae.to(memory_format=torch.channels_last)
    model = CompiledModel(buckets, qkv=fuse_qkv(unet))
    sync = model.qkv.sync if model.qkv else None
    model.unet = _dispatch(unet, _unet_signature(unet), device, backend, sync, _float_timestep)
    model.decoder = _dispatch(vae.decoder, _decoder_signature(vae.decoder), device, backend)
    model._modules = [unet, vae.decoder]
    _COMPILED[unet] = model
    artefacts = _artefacts_path(settings, loaded, buckets, device) if backend in (None, "inductor") else None
    _load_artefacts(artefacts)
    started = time.perf_counter()
    try:
        warm_up(pipe, model, buckets)
    except Exception:  # an OOM at a large bucket, a compiler error: the model still runs, eager
        log.exception("compiling %s failed; it runs eager", ", ".join(map(_label, buckets)))
        release(pipe)
        return None
    model.warmup_seconds = time.perf_counter() - started
    _save_artefacts(artefacts)
    log.info("compiled %s in %.1f s", ", ".join(map(_label, buckets)), model.warmup_seconds)
    return model


def _label(bucket: Bucket) -> str:
    return f"{bucket.width}x{bucket.height}:{bucket.batch}"


def warm_up(pipe: Any, model: CompiledModel, buckets: tuple[Bucket, ...]) -> None:
    """Run each bucket through the real pipeline and decoder, recording the signatures it compiles."""
    from sdgate.engine.sampling import decode_latents  # sampling imports previews, not this module

    dispatchers = [d for d in (model.unet, model.decoder) if d is not None]
    for d in dispatchers:
        d.warming = True
    try:
        for bucket in buckets:
            latents = pipe(
                prompt=[""] * bucket.batch,
                width=bucket.width,
                height=bucket.height,
                num_inference_steps=WARMUP_STEPS,
                guidance_scale=7.0,
                output_type="latent",
            ).images
            for _ in range(WARMUP_STEPS):
                decode_latents(pipe, latents)
    finally:
        for d in dispatchers:
            d.warming = False


def _raise_recompile_limit() -> None:
    config = torch._dynamo.config
    name = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"
    setattr(config, name, max(getattr(config, name), _RECOMPILE_LIMIT))


def _artefacts_path(
    settings: Settings, loaded: Any, buckets: tuple[Bucket, ...], device: torch.device
) -> Path:
    """One file per model, device kind, dtype, torch version and bucket set."""
    pipe = loaded.pipeline
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
    parts = [
        torch.__version__, gpu, str(pipe.unet.dtype), str(pipe.vae.dtype), loaded.family or "",
        repr(sorted(pipe.unet.config.items())), repr(buckets),
    ]  # fmt: skip
    digest = hashlib.sha256("\n".join(parts).encode()).hexdigest()[:20]
    return cache_dir(settings) / f"artefacts-{digest}.bin"


def _load_artefacts(path: Path | None) -> None:
    loader = getattr(torch.compiler, "load_cache_artifacts", None)
    if path is None or loader is None or not path.is_file():
        return
    try:
        loader(path.read_bytes())
        log.info("compile cache: loaded %s", path.name)
    except Exception:  # a file from another torch: compile afresh
        log.warning("compile cache: could not load %s; compiling afresh", path, exc_info=True)


def _save_artefacts(path: Path | None) -> None:
    saver = getattr(torch.compiler, "save_cache_artifacts", None)
    if path is None or saver is None:
        return
    saved = saver()
    if saved is None:
        return
    data = saved[0]
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)
