"""``run_graph``: a ComfyUI prompt (``GraphRequest``) as one job on the engine.

1. Order: the nodes the output nodes need, dependencies first (an iterative depth-first walk; a
   cycle is an ``InvalidRequest``), output nodes in the order the request lists them.
2. Run each node: its inputs are literals or ``[node_id, output_index]`` links to outputs already
   computed. Before a node runs, the control gets ``StepReport(0, 1, step=0, steps=S, node=id)``
   (ComfyUI's ``executing``; S is the node's sampler steps, else 1); a sampler then reports steps
   1..S with the same node id and a lazy preview (ComfyUI's ``progress``). CANCEL raises
   ``JobCancelled``; INTERRUPT stops the prompt: the pictures the output nodes saved so far come
   back with ``interrupted=True``, or, when none had run, ``JobCancelled`` (ComfyUI's
   ``execution_interrupted``). SKIP has no meaning in a graph and is ignored.
3. Cache: a node's *signature* is its class, its literal inputs, the signatures of the nodes it
   reads and, for loaders and LoadImage, what the file is (size and mtime, the image's store id).
   Outputs of deterministic nodes are kept in a small per-engine LRU under that signature, so an
   unchanged CLIPTextEncode, VAEEncode or even KSampler (same seed and every input the same) is
   not run again. Loaders (cheap: the engine's own model cache), LoRA/CLIP-layer handles and the
   output nodes always run; a loader whose signature ran before still counts as cached. The ids of
   the nodes served from the cache are in the output's notes as ``CACHED_NOTE_PREFIX`` + a JSON
   list (``cached_nodes(notes)`` reads it back), for ComfyUI's ``execution_cached``; a control
   with an ``on_cached(node_ids)`` method hears the ones expected before the first node runs.

A node that fails names itself: the exception carries ``comfy_node_id`` and ``comfy_node_type``,
and an ``SdgateError`` without a precise field gets ``field = "node:<id>"``.

The diffusers engine runs the nodes of ``engine.comfy.nodes`` on its own components under its
lock; any other engine (the null engine) runs ``engine.comfy.shapes``: sizes only, blank pictures.
This module imports no torch.
"""

from __future__ import annotations

import json
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Protocol

from sdgate.core.engine import (
    EngineInputs,
    EngineOutput,
    GeneratedImage,
    GenerationControl,
    NodeImages,
    StepAction,
    StepReport,
)
from sdgate.core.errors import InvalidRequest, JobCancelled, SdgateError
from sdgate.core.requests import GraphRequest
from sdgate.engine.comfy.values import Pixels, SampleInfo

CACHED_NOTE_PREFIX = "comfy.cached_nodes: "
CACHE_ENTRIES = 48
CACHE_BYTES = 512 * 2**20

OUTPUT_NODES = frozenset({"SaveImage", "PreviewImage"})
# Nodes that always run: loaders (their output is a handle over the engine's own caches) and the
# handle edits after them; output nodes, which write this job's pictures.
ALWAYS_RUN = frozenset(
    {
        "CheckpointLoaderSimple",
        "VAELoader",
        "UpscaleModelLoader",
        "ControlNetLoader",
        "LoraLoader",
        "LoraLoaderModelOnly",
        "CLIPSetLastLayer",
        *OUTPUT_NODES,
    }
)


class Interrupted(Exception):
    """The control answered INTERRUPT: the prompt stops where it is."""


class Backend(Protocol):
    def session(self, ctx: RunContext) -> AbstractContextManager[None]: ...

    def token(self, ctx: RunContext, class_type: str, inputs: Mapping[str, Any]) -> str: ...

    def run(self, ctx: RunContext, class_type: str, args: dict[str, Any]) -> tuple[Any, ...]: ...

    def usable(self, value: tuple[Any, ...]) -> bool: ...


def run_node(nodes: Mapping[str, Callable[..., tuple[Any, ...]]], class_type: str,
             *args: Any) -> tuple[Any, ...]:
    """A backend's ``run``: ``class_type``'s function in the backend's table, called with ``args``;
    a type the table lacks is refused naming the prompt."""
    impl = nodes.get(class_type)
    if impl is None:
        raise InvalidRequest(f"node type {class_type} is not supported", field="prompt")
    return impl(*args)


def image_token(ctx: RunContext, class_type: str, inputs: Mapping[str, Any]) -> str:
    """A backend's ``token`` for the nodes that read an input image: the image's id (a new image
    is a new output); "" for the others."""
    if class_type in ("LoadImage", "LoadImageMask"):
        return ctx.image_id(str(inputs.get("image")))
    return ""


@dataclass
class RunContext:
    """One prompt's run: what its nodes read (the engine, request, inputs) and what they leave."""

    engine: Any
    request: GraphRequest
    inputs: EngineInputs
    control: GenerationControl
    node: str | None = None
    images: list[GeneratedImage] = field(default_factory=list)
    node_outputs: dict[str, NodeImages] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    last: SampleInfo | None = None  # the last sampler run
    saved: SampleInfo | None = None  # what made the last pictures saved (a cached sampler too)
    model_name: str = ""
    model_hash: str | None = None
    sample_s: float = 0.0

    def report(self, step: int, steps: int, preview: Any = None) -> None:
        """One report for the node running; acts on the answer (cancel raises, interrupt stops)."""
        action = self.control.on_step(StepReport(0, 1, step, max(1, steps), preview, node=self.node))
        if action == StepAction.CANCEL:
            raise JobCancelled("the job was cancelled")
        if action == StepAction.INTERRUPT:
            raise Interrupted

    def note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)

    def image_file(self, name: str) -> int:
        """The position in ``inputs.init_images`` of the file a LoadImage node names."""
        for i, (file, _id) in enumerate(self.request.images):
            if file == name:
                if i >= len(self.inputs.init_images):
                    break
                return i
        raise InvalidRequest(f"image {name!r} was not uploaded with this prompt", field=f"prompt.{name}")

    def image_id(self, name: str) -> str:
        return next((image_id for file, image_id in self.request.images if file == name), name)

    def save(self, pictures: list[Any], pixels: Pixels, *, kind: str, prefix: str) -> None:
        """Collect an output node's pictures (PIL) with their infotext."""
        info = pixels.info
        self.saved = info or self.saved
        first = len(self.images)
        prompt_json = json.dumps(self.request.graph)
        for picture in pictures:
            picture.info["prompt"] = prompt_json  # ComfyUI's PNG chunk, for a writer that keeps it
            workflow = self.request.extra_data.get("extra_pnginfo", {})
            if isinstance(workflow, dict) and "workflow" in workflow:
                picture.info["workflow"] = json.dumps(workflow["workflow"])
            self.images.append(
                GeneratedImage(
                    picture,
                    info.seed if info else 0,
                    info.seed if info else 0,
                    infotext(info, pixels) if info else "",
                    info.prompt if info else "",
                    info.negative_prompt if info else "",
                )
            )
        indices = tuple(range(first, len(self.images)))
        earlier = self.node_outputs.get(self.node or "")
        if earlier is not None:
            indices = (*earlier.indices, *indices)
        self.node_outputs[self.node or ""] = NodeImages(indices, kind=kind, filename_prefix=prefix)


def infotext(info: SampleInfo, pixels: Pixels) -> str:
    """A1111-style parameters of a saved picture: the sampler that made it, at the picture's size."""
    from sdgate.core.infotext import A1111_VERSION, format_infotext

    params: dict[str, object] = {
        "Steps": info.steps,
        "Sampler": info.sampler,
        "Schedule type": _schedule_label(info.schedule),
        "CFG scale": info.cfg,
        "Seed": info.seed,
        "Size": f"{pixels.width}x{pixels.height}",
        "Model hash": info.model_hash,
        "Model": info.model_stem,
        "Denoising strength": info.denoise if info.denoise < 1.0 else None,
        "Lora": ", ".join(info.loras) or None,
        "Comfy sampler": f"{info.comfy_sampler} {info.comfy_scheduler}",
        "Sampler note": "; ".join(info.notes) or None,
        **{f"ControlNet {i}": value for i, value in enumerate(info.controlnets)},
        "Version": A1111_VERSION,
    }
    return format_infotext(info.prompt, info.negative_prompt, params)


def _schedule_label(schedule: str) -> str:
    from sdgate.engine.common import schedule_label

    return schedule_label(schedule)


# --- the order -----------------------------------------------------------------------------------


def is_link(value: Any) -> bool:
    return (
        isinstance(value, list | tuple)
        and len(value) == 2
        and isinstance(value[0], str)
        and isinstance(value[1], int)
        and not isinstance(value[1], bool)
    )


def execution_order(graph: Mapping[str, Any], outputs: tuple[str, ...] | list[str]) -> list[str]:
    """The nodes ``outputs`` need, each after the nodes it reads (iterative; no recursion)."""
    order: list[str] = []
    done: set[str] = set()
    for output in outputs:
        if output in done:
            continue
        stack: list[tuple[str, Iterator[str]]] = [(output, _deps(graph, output))]
        on_path = {output}
        while stack:
            node_id, deps = stack[-1]
            nxt = next(deps, None)
            if nxt is None:
                stack.pop()
                on_path.discard(node_id)
                if node_id not in done:
                    done.add(node_id)
                    order.append(node_id)
                continue
            if nxt in done:
                continue
            if nxt in on_path:
                raise InvalidRequest(f"the prompt has a cycle through node {nxt}", field="prompt")
            on_path.add(nxt)
            stack.append((nxt, _deps(graph, nxt)))
    return order


def _deps(graph: Mapping[str, Any], node_id: str) -> Iterator[str]:
    node = graph.get(node_id)
    if not isinstance(node, Mapping):
        raise InvalidRequest(f"node {node_id} does not exist", field="prompt")
    return iter([v[0] for v in dict(node.get("inputs") or {}).values() if is_link(v)])


# --- the cache -----------------------------------------------------------------------------------


class NodeCache:
    """Unchanged node outputs by signature: an LRU bounded in entries and (roughly) in bytes."""

    def __init__(self, entries: int = CACHE_ENTRIES, max_bytes: int = CACHE_BYTES) -> None:
        self.entries = entries
        self.max_bytes = max_bytes
        self._items: OrderedDict[str, tuple[tuple[Any, ...], int]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str) -> tuple[Any, ...] | None:
        with self._lock:
            item = self._items.get(key)
            if item is None:
                return None
            self._items.move_to_end(key)
            return item[0]

    def put(self, key: str, value: tuple[Any, ...], size: int = 0) -> None:
        if size > self.max_bytes:
            return
        with self._lock:
            self._items[key] = (value, size)
            self._items.move_to_end(key)
            while len(self._items) > self.entries or sum(s for _, s in self._items.values()) > self.max_bytes:
                self._items.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

    def __contains__(self, key: object) -> bool:
        return key in self._items

    def __len__(self) -> int:
        return len(self._items)


_CACHES: weakref.WeakKeyDictionary[Any, NodeCache] = weakref.WeakKeyDictionary()
_CACHES_LOCK = threading.Lock()


def cache_for(engine: Any) -> NodeCache:
    with _CACHES_LOCK:
        cache = _CACHES.get(engine)
        if cache is None:
            cache = _CACHES[engine] = NodeCache()
        return cache


def clear_cache(engine: Any) -> None:
    """Forget ``engine``'s cached node outputs (ComfyUI's ``/free``; the tensors they hold go too)."""
    with _CACHES_LOCK:
        cache = _CACHES.get(engine)
    if cache is not None:
        cache.clear()


def cached_nodes(notes: list[str] | tuple[str, ...]) -> list[str]:
    """The node ids an output's notes say came from the cache (``execution_cached``)."""
    for note in notes:
        if note.startswith(CACHED_NOTE_PREFIX):
            return [str(n) for n in json.loads(note[len(CACHED_NOTE_PREFIX) :])]
    return []


def _signature(class_type: str, inputs: Mapping[str, Any], upstream: Mapping[str, str], token: str) -> str:
    parts = {
        name: (["link", upstream[v[0]], v[1]] if is_link(v) else ["value", v])
        for name, v in sorted(inputs.items())
    }
    return json.dumps([class_type, parts, token], sort_keys=True, default=repr)


# --- running -------------------------------------------------------------------------------------


def _backend(engine: Any) -> Backend:
    if getattr(engine, "name", None) == "diffusers":
        from sdgate.engine.comfy.nodes import TorchBackend

        return TorchBackend()
    from sdgate.engine.comfy.shapes import ShapeBackend

    return ShapeBackend()


def run_graph(
    engine: Any, request: GraphRequest, inputs: EngineInputs, control: GenerationControl
) -> EngineOutput:
    """Run ``request``'s graph on ``engine``; see the module docstring."""
    started = time.perf_counter()
    graph = request.graph
    order = execution_order(graph, list(request.outputs))
    backend = _backend(engine)
    cache = cache_for(engine)
    loaded = getattr(engine, "loaded_models", None)
    if len(cache) and callable(loaded) and not loaded():
        cache.clear()  # the engine was unloaded (A1111's unload, ComfyUI's /free): drop what it held
    ctx = RunContext(engine, request, inputs, control)
    signatures: dict[str, str] = {}
    for node_id in order:
        node = graph[node_id]
        class_type, raw = str(node.get("class_type")), dict(node.get("inputs") or {})
        signatures[node_id] = _signature(class_type, raw, signatures, backend.token(ctx, class_type, raw))
    announce = getattr(control, "on_cached", None)
    if callable(announce):  # ComfyUI sends execution_cached before the first node runs
        announce(
            [n for n in order if graph[n].get("class_type") not in OUTPUT_NODES and signatures[n] in cache]
        )
    values: dict[str, tuple[Any, ...]] = {}
    cached: list[str] = []
    interrupted = False
    try:
        with backend.session(ctx):
            for node_id in order:
                node = graph[node_id]
                class_type = str(node.get("class_type"))
                raw = dict(node.get("inputs") or {})
                signature = signatures[node_id]
                ctx.node = node_id
                if class_type not in ALWAYS_RUN:
                    hit = cache.get(signature)
                    if hit is not None and backend.usable(hit):
                        values[node_id] = hit
                        cached.append(node_id)
                        continue
                args = {name: _resolve(values, v) for name, v in raw.items()}
                seen = class_type in ALWAYS_RUN and cache.get(signature) is not None
                if seen and class_type not in OUTPUT_NODES:
                    cached.append(node_id)  # a loader whose result is the one it gave before
                else:
                    ctx.report(0, _node_steps(class_type, args))
                out = _run_node(backend, ctx, class_type, args)
                values[node_id] = out
                if class_type in ALWAYS_RUN:
                    if class_type not in OUTPUT_NODES:
                        cache.put(signature, ())
                else:
                    cache.put(signature, out, _size_of(out))
    except Interrupted:
        if not ctx.images:
            raise JobCancelled("the prompt was interrupted before any output node ran") from None
        interrupted = True
    done = time.perf_counter()
    notes = [*ctx.notes, CACHED_NOTE_PREFIX + json.dumps(cached)]
    last = ctx.saved or ctx.last
    first_image = ctx.images[0].image if ctx.images else None
    return EngineOutput(
        images=ctx.images,
        model_name=ctx.model_name,
        model_hash=ctx.model_hash,
        sampler=last.sampler if last else "",
        scheduler=last.schedule if last else "",
        width=last.width if last else (first_image.width if first_image else 0),
        height=last.height if last else (first_image.height if first_image else 0),
        steps=last.steps if last else 0,
        interrupted=interrupted,
        notes=notes,
        timings={"sample": ctx.sample_s, "total": done - started},
        node_outputs=ctx.node_outputs,
    )


def _run_node(backend: Backend, ctx: RunContext, class_type: str, args: dict[str, Any]) -> tuple[Any, ...]:
    """One node; an error it raises names it (ComfyUI's ``execution_error`` has ``node_id`` and
    ``node_type``): ``comfy_node_id`` / ``comfy_node_type`` attributes on any exception, and an
    ``SdgateError`` without a more precise field gets ``field = "node:<id>"`` (the job's error dict)."""
    try:
        return backend.run(ctx, class_type, args)
    except (Interrupted, JobCancelled):
        raise
    except Exception as exc:
        try:
            exc.comfy_node_id = ctx.node  # type: ignore[attr-defined]
            exc.comfy_node_type = class_type  # type: ignore[attr-defined]
        except AttributeError:  # an exception type with __slots__
            pass
        if isinstance(exc, SdgateError) and exc.field in (None, "prompt"):
            exc.field = f"node:{ctx.node}"
        raise


def _resolve(values: Mapping[str, tuple[Any, ...]], value: Any) -> Any:
    if not is_link(value):
        return value
    outputs = values[value[0]]
    if value[1] >= len(outputs):
        raise InvalidRequest(f"node {value[0]} has no output {value[1]}", field="prompt")
    return outputs[value[1]]


def _node_steps(class_type: str, args: Mapping[str, Any]) -> int:
    if class_type in ("KSampler", "KSamplerAdvanced"):
        try:
            return max(1, int(args.get("steps", 1)))
        except (TypeError, ValueError):
            return 1
    return 1


def _size_of(value: Any, depth: int = 0) -> int:
    """Rough bytes held by a node output (tensors inside tuples and dataclasses)."""
    if depth > 4 or value is None:
        return 0
    nbytes = getattr(value, "element_size", None)
    if callable(nbytes) and hasattr(value, "nelement"):
        return int(value.element_size() * value.nelement())
    if isinstance(value, tuple | list):
        return sum(_size_of(v, depth + 1) for v in value)
    if hasattr(value, "__dataclass_fields__"):
        return sum(_size_of(getattr(value, f), depth + 1) for f in value.__dataclass_fields__)
    return 0
