"""A generation's ControlNet units (``GenerationRequest.controlnets``) on ``DiffusersEngine``.

Three steps, called by the engine:

1. ``check(catalog, request, inputs)``, before the job waits for the engine: every unit names a
   ControlNet the models folder has (else a 404 naming ``controlnets[i].model``), a preprocessor
   this server runs (400 naming ``controlnets[i].module``), and has an image (its own, or the
   job's first init image).
2. ``load(engine, request, inputs, model, keep)``, under the engine's lock once the checkpoint is
   loaded: each ControlNet from the engine's model cache, or loaded now onto the engine's device
   and dtype and put there (it shares the checkpoints' memory budget: evicted least recently used
   first, dropped by ``unload()``). A ControlNet of another family than the checkpoint is a 400
   naming ``controlnets[i].model``. The result, ``JobControls``, travels with the job.
3. ``JobControls.applied(pipe, width, height, batch)`` around a pass's pipeline call: each unit's
   image is preprocessed (``core.controlnet.preprocess`` at its processor resolution, or the
   pixel-perfect one), fitted to the pass's size by its resize mode, and applied through
   ``engine.controlnet.controlled`` with the pass's scheduler as the clock. ``infotext_params``
   writes A1111's ``ControlNet i`` entries.

Where it applies: txt2img's pass (with a refiner: until the switch; the refiner's UNet is not
guided), hires fix's second pass on the same checkpoint (the control image fitted to its size,
the window over its own steps), img2img and inpainting (with "only masked", the control image is
fitted to the whole processing size, not cropped like the init image).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from PIL import Image

from sdgate.core import controlnet as pre
from sdgate.core.engine import EngineInputs
from sdgate.core.errors import InvalidRequest, ModelNotFound
from sdgate.core.models import ModelCatalog
from sdgate.core.requests import ControlMode, ControlNetUnit, ControlResize, GenerationRequest
from sdgate.engine import controlnet_loading as cl
from sdgate.engine import hires
from sdgate.engine.common import JobShape
from sdgate.engine.controlnet import ControlHint, control_tensor, controlled, mask_tensor, scheduler_progress
from sdgate.engine.loading import UnsupportedModel

if TYPE_CHECKING:
    from sdgate.engine.diffusers_engine import DiffusersEngine, LoadedModel

CACHE_PREFIX = "controlnet:"
RESIZE_LABELS = {
    ControlResize.JUST_RESIZE: "Just Resize",
    ControlResize.CROP_AND_RESIZE: "Crop and Resize",
    ControlResize.RESIZE_AND_FILL: "Resize and Fill",
}
MODE_LABELS = {
    ControlMode.BALANCED: "Balanced",
    ControlMode.PROMPT: "My prompt is more important",
    ControlMode.CONTROLNET: "ControlNet is more important",
}


# --- 1. checking --------------------------------------------------------------------------------------


def check(catalog: ModelCatalog, request: GenerationRequest, inputs: EngineInputs) -> list[cl.ControlNetFile]:
    """Each unit's ControlNet file, after checking what can be checked without loading."""
    files = []
    for i, (unit, image, _mask) in enumerate(inputs.controls(request)):
        found = find(catalog, unit.model)
        if found is None:
            raise ModelNotFound(
                f"controlnets[{i}].model: ControlNet {unit.model[:200]!r} not found",
                field=f"controlnets[{i}].model",
            )
        if image is None and not inputs.init_images:
            raise InvalidRequest(
                f"controlnets[{i}].image: a ControlNet unit needs an image (or an init image to use)",
                field=f"controlnets[{i}].image",
            )
        with _field(i, "module"):
            pre.resolve_module(unit.module)
        if unit.guidance_start > unit.guidance_end:
            raise InvalidRequest(
                f"controlnets[{i}].guidance_start must not exceed guidance_end",
                field=f"controlnets[{i}].guidance_start",
            )
        files.append(found)
    return files


def find(catalog: ModelCatalog, name: str) -> cl.ControlNetFile | None:
    """A ControlNet by the name a client sends (see ``controlnet_loading.find_controlnet``)."""
    listed = [  # folders the catalog lists beyond the models folder (the built-in demo ControlNet)
        cl.ControlNetFile(f.name, f.relpath, f.path)
        for f in catalog.list_files("controlnet")
        if f.path.is_dir()
    ]
    return cl.find_controlnet(catalog.settings.resolved_models_dir, name, listed)


@contextmanager
def _field(index: int, name: str) -> Iterator[None]:
    """An ``InvalidRequest`` from a shared helper, re-aimed at this unit's field."""
    try:
        yield
    except InvalidRequest as exc:
        where = f"controlnets[{index}].{name}"
        raise InvalidRequest(f"{where}: {exc.message}", field=where) from exc


# --- 2. loading ------------------------------------------------------------------------------------


@dataclass
class _CachedNet:
    """A ControlNet as an entry of the engine's model cache. Evicting an entry drops
    ``entry.loaded.pipeline`` (and any compiled UNet of it: a ControlNet has none), so the net is
    held there."""

    pipeline: Any  # the ControlNetModel; None once evicted

    @property
    def loaded(self) -> _CachedNet:
        return self


@dataclass
class LoadedUnit:
    unit: ControlNetUnit
    net: Any
    name: str  # for the infotext: "name [hash]"
    image: Image.Image
    mask: Image.Image | None


@dataclass
class JobControls:
    """A job's loaded ControlNet units; hints are prepared once per pass size."""

    units: list[LoadedUnit] = field(default_factory=list)
    _hints: dict[tuple[int, int], list[ControlHint]] = field(default_factory=dict)

    def hints(self, width: int, height: int) -> list[ControlHint]:
        key = (width, height)
        if key not in self._hints:
            self._hints[key] = [_hint(i, unit, width, height) for i, unit in enumerate(self.units)]
        return self._hints[key]

    def applied(self, pipe: Any, width: int, height: int, batch: int) -> Any:
        """The units on ``pipe``'s UNet for one pass of ``width`` x ``height`` pixels."""
        if not self.units:
            return nullcontext()
        hints = [h for h in self.hints(width, height) if h.weight != 0.0]
        return controlled(pipe.unet, hints, scheduler_progress(lambda: pipe.scheduler), batch=batch)

    def hires_applied(
        self, model: LoadedModel, request: GenerationRequest, shape: JobShape, second: Any = None
    ) -> Any:
        """The units on hires fix's second pass over ``model`` (its img2img pipeline, at its final
        size), as A1111 guides it too; not when the pass runs on another checkpoint (``second``)."""
        if not self.units or request.hires is None or second is not None:
            return nullcontext()
        size = hires.target_size(shape.width, shape.height, request.hires, model.loaded.vae_scale_factor)
        variant = hires.img2img_pipeline(model.pipeline, model.loaded.family)
        return self.applied(variant, size.width, size.height, request.batch_size)

    def infotext_params(self) -> dict[str, object]:
        return {f"ControlNet {i}": _infotext_value(u) for i, u in enumerate(self.units)}


def load(
    engine: DiffusersEngine,
    request: GenerationRequest,
    inputs: EngineInputs,
    model: LoadedModel,
    keep: Sequence[str],
) -> JobControls:
    """The job's ControlNets on the engine's device (from its cache, or loaded into it)."""
    if not request.controlnets:
        return JobControls()
    files = check(engine.catalog, request, inputs)
    kept = list(keep)
    units = []
    for i, ((unit, image, mask), found) in enumerate(zip(inputs.controls(request), files, strict=True)):
        net, key = net_for(engine, found, model, kept, field=f"controlnets[{i}].model")
        kept.append(key)
        source = image if image is not None else inputs.init_images[0]
        units.append(LoadedUnit(unit, net, _display_name(engine.catalog, found), source, mask))
    return JobControls(units)


def net_for(
    engine: DiffusersEngine, found: cl.ControlNetFile, model: LoadedModel, keep: Sequence[str], *, field: str
) -> tuple[Any, str]:
    """The ControlNet ``found`` for ``model``'s UNet on the engine's device, and its cache key: from
    the engine's model cache, or loaded into it now (never evicting ``keep``). One of another family
    or size is an ``InvalidRequest`` naming ``field``; so is a file that does not load."""
    family = model.loaded.family
    key = f"{CACHE_PREFIX}{found.path}|{family}"
    cached = engine.cache.get(key)
    if cached is not None and cached.pipeline is not None:
        return cached.pipeline, key
    engine.cache.make_room(_file_bytes(found), keep=keep)
    try:
        net = cl.load_controlnet(found.path, model.pipeline.unet.config, family=family, dtype=engine.dtype)
    except cl.FamilyMismatch as exc:
        raise InvalidRequest(
            f"{field}: ControlNet {found.name!r} does not fit model {model.info.name}: {exc}", field=field
        ) from exc
    except (UnsupportedModel, OSError, ValueError, KeyError, StopIteration) as exc:  # a broken file or folder
        raise InvalidRequest(
            f"{field}: ControlNet {found.name!r} cannot be loaded: {exc}", field=field
        ) from exc
    _check_fits(net, model, field, found.name)
    net.to(engine.device)
    net.requires_grad_(False)
    engine.cache.put(key, _CachedNet(net), cl.net_bytes(net), keep=keep)  # type: ignore[arg-type]
    return net, key


def _check_fits(net: Any, model: LoadedModel, where: str, name: str) -> None:
    """A ControlNet of the right family whose residuals the UNet still cannot take (another size)."""
    unet = model.pipeline.unet.config
    ours = (list(net.config.block_out_channels), net.config.layers_per_block, net.config.cross_attention_dim)
    theirs = (list(unet.block_out_channels), unet.layers_per_block, unet.cross_attention_dim)
    if ours != theirs:
        raise InvalidRequest(
            f"{where}: ControlNet {name!r} does not fit model {model.info.name} "
            f"(its blocks, widths or context width differ)",
            field=where,
        )


def _file_bytes(found: cl.ControlNetFile) -> int:
    if found.path.is_file():
        return found.path.stat().st_size
    return sum(f.stat().st_size for f in found.path.rglob("*.safetensors"))


def _display_name(catalog: ModelCatalog, found: cl.ControlNetFile) -> str:
    """A1111's infotext names a ControlNet ``stem [first 8 of its sha256]``."""
    if found.path.is_dir():
        return found.name
    return f"{found.name} [{catalog.file_sha256(found.path)[:8]}]"


# --- 3. applying ----------------------------------------------------------------------------------


def _hint(index: int, loaded: LoadedUnit, width: int, height: int) -> ControlHint:
    unit = loaded.unit
    resolution = unit.processor_res
    if unit.pixel_perfect:
        resolution = pre.pixel_perfect_resolution(loaded.image.size, (width, height), unit.resize_mode)
    with _field(index, "module"):
        detected = pre.preprocess(
            unit.module,
            loaded.image,
            resolution=resolution,
            threshold_a=unit.threshold_a,
            threshold_b=unit.threshold_b,
        )
    fitted = pre.fit_control_image(detected, width, height, unit.resize_mode)
    mask = None
    if loaded.mask is not None:
        mask = mask_tensor(pre.fit_control_image(loaded.mask.convert("RGB"), width, height, unit.resize_mode))
    return ControlHint(
        loaded.net,
        control_tensor(fitted),
        weight=unit.weight,
        start=unit.guidance_start,
        end=unit.guidance_end,
        mode=unit.control_mode,
        mask=mask,
    )


def _infotext_value(loaded: LoadedUnit) -> str:
    unit = loaded.unit
    fields = {
        "Module": unit.module,
        "Model": loaded.name,
        "Weight": unit.weight,
        "Resize Mode": RESIZE_LABELS[unit.resize_mode],
        "Processor Res": unit.processor_res,
        "Threshold A": -1 if unit.threshold_a is None else unit.threshold_a,
        "Threshold B": -1 if unit.threshold_b is None else unit.threshold_b,
        "Guidance Start": unit.guidance_start,
        "Guidance End": unit.guidance_end,
        "Pixel Perfect": unit.pixel_perfect,
        "Control Mode": MODE_LABELS[unit.control_mode],
    }
    return ", ".join(f"{k}: {v}" for k, v in fields.items())
