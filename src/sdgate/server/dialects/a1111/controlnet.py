"""A1111's ControlNet extension (sd-webui-controlnet) on txt2img and img2img: the units its clients
send as ``alwayson_scripts.controlnet.args``, under the extension's field names and value forms,
as ``ControlNetUnit``s.

Two steps, so a refused request leaves nothing behind: ``parse_units`` checks every unit (values,
model, preprocessor, how many) without decoding an image; ``store_images`` then decodes and
stores each unit's image and mask (bounded as init images are) and gives the units their ids.

Forms the extension takes, all accepted here: the script's key in any case (webuiapi sends
``ControlNet``), ``{"args": [unit, ...]}`` (or the list itself), units that are off
(``enabled: false``) skipped, ``input_image`` for ``image``, ``image`` as ``{"image", "mask"}``,
``resize_mode`` and ``control_mode`` as numbers or the UI's labels (old labels too), ``model`` with
or without its `` [hash]``, -1 for "the preprocessor's default" resolution and thresholds.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

from sdgate.core import images as core_images
from sdgate.core.errors import InvalidRequest
from sdgate.core.requests import ControlMode, ControlNetUnit, ControlResize
from sdgate.server import jobflow
from sdgate.server.deps import image_limits
from sdgate.server.fetch import make_fetcher
from sdgate.server.imaging import STAND_IN_ID
from sdgate.server.logs import LogOnce
from sdgate.server.services import Services
from sdgate.server.validation import check_controlnet_count

log = logging.getLogger("sdgate.a1111")
_ignored = LogOnce(log, "ControlNet: accepting and ignoring unit field(s): %s")

SCRIPT_NAME = "controlnet"  # the extension's script title, lowercased (as /scripts lists it)
RESIZE_MODES: dict[str, ControlResize] = {
    "just resize": ControlResize.JUST_RESIZE,
    "crop and resize": ControlResize.CROP_AND_RESIZE,
    "resize and fill": ControlResize.RESIZE_AND_FILL,
    # the extension's older labels, which it still maps
    "inner fit (scale to fit)": ControlResize.CROP_AND_RESIZE,
    "scale to fit (inner fit)": ControlResize.CROP_AND_RESIZE,
    "outer fit (shrink to fit)": ControlResize.RESIZE_AND_FILL,
    "envelope (outer fit)": ControlResize.RESIZE_AND_FILL,
}
RESIZE_BY_NUMBER = (ControlResize.JUST_RESIZE, ControlResize.CROP_AND_RESIZE, ControlResize.RESIZE_AND_FILL)
CONTROL_MODES: dict[str, ControlMode] = {
    "balanced": ControlMode.BALANCED,
    "my prompt is more important": ControlMode.PROMPT,
    "controlnet is more important": ControlMode.CONTROLNET,
}
CONTROL_BY_NUMBER = (ControlMode.BALANCED, ControlMode.PROMPT, ControlMode.CONTROLNET)
NO_MODEL = ("", "none")
DEFAULT_PROCESSOR_RES = 512
MIN_PROCESSOR_RES, MAX_PROCESSOR_RES = 64, 2048
MAX_THRESHOLD = 10000.0  # the extension's sliders go to 255 (canny) or 1024 (resolutions)
# Fields the extension takes that change nothing here.
_KNOWN = frozenset({
    "enabled", "module", "model", "weight", "image", "input_image", "mask", "resize_mode", "processor_res",
    "threshold_a", "threshold_b", "guidance_start", "guidance_end", "control_mode", "pixel_perfect",
})  # fmt: skip


@dataclass(frozen=True)
class WireUnit:
    """One enabled unit, checked: ``unit`` with stand-in image ids, and the client's images."""

    field: str  # "alwayson_scripts.ControlNet.args.0": what errors about it name
    unit: ControlNetUnit
    image: str | None
    mask: str | None


def script_key(alwayson: dict[str, Any] | None) -> str | None:
    """The client's key for the ControlNet script (any case), or None."""
    return next((key for key in alwayson or {} if key.lower() == SCRIPT_NAME), None)


def parse_units(
    alwayson: dict[str, Any] | None, services: Services, *, is_img2img: bool, family: str | None
) -> list[WireUnit]:
    """The enabled units of a request's ``alwayson_scripts``, every value checked (400 or 404
    naming the field as the client spelled it); no image is decoded yet."""
    key = script_key(alwayson)
    if key is None:
        return []
    prefix = f"alwayson_scripts.{key}"
    value = (alwayson or {})[key]
    args = value.get("args", []) if isinstance(value, dict) else value
    if isinstance(args, dict):
        args = [args]
    if not isinstance(args, list):
        raise InvalidRequest(f"{prefix}.args: must be a list of ControlNet units", field=f"{prefix}.args")
    units = []
    for i, raw in enumerate(args):
        field = f"{prefix}.args.{i}"
        if not isinstance(raw, dict):
            raise InvalidRequest(f"{field}: a ControlNet unit must be an object", field=field)
        if not _flag(raw.get("enabled", True), f"{field}.enabled"):
            continue
        units.append(_parse_unit(raw, field, services, is_img2img=is_img2img, family=family))
    check_controlnet_count(len(units), services.settings, field=f"{prefix}.args")
    return units


def stand_in_units(units: list[WireUnit]) -> tuple[ControlNetUnit, ...]:
    return tuple(u.unit for u in units)


def store_images(services: Services, units: list[WireUnit]) -> tuple[ControlNetUnit, ...]:
    """Decode, check and store each unit's image and mask (sync): the units with their ids."""
    limits = image_limits(services)
    out = []
    for wire in units:
        ids: dict[str, str | None] = {"image": None, "mask": None}
        for name, mode, value in (("image", "RGB", wire.image), ("mask", "L", wire.mask)):
            if value is None:
                continue
            field = f"{wire.field}.{name}"
            decoded = core_images.decode_base64_image(
                value, field=field, limits=limits, mode=mode,  # type: ignore[arg-type]
                fetch_url=make_fetcher(services.settings, field),
            )
            ids[name] = services.images.put(core_images.encode_png(decoded), content_type="image/png")
        out.append(wire.unit.model_copy(update=ids))
    return tuple(out)


def _parse_unit(
    raw: dict[str, Any], field: str, services: Services, *, is_img2img: bool, family: str | None
) -> WireUnit:
    _ignored.names(k for k in raw if k not in _KNOWN)
    model = _text(raw.get("model", "None"), f"{field}.model")
    if model.strip().lower() in NO_MODEL:
        raise InvalidRequest(f"{field}.model: choose a ControlNet model (GET /controlnet/model_list)",
                             field=f"{field}.model")
    model = jobflow.resolve_controlnet(services, model, field=f"{field}.model", family=family)
    module = _text(raw.get("module", "none"), f"{field}.module")
    image, mask = _images(raw, field)
    if image is None and not is_img2img:
        raise InvalidRequest(f"{field}.image: a control image is required on txt2img", field=f"{field}.image")
    start = _number(raw.get("guidance_start", 0.0), f"{field}.guidance_start", 0.0, 1.0)
    end = _number(raw.get("guidance_end", 1.0), f"{field}.guidance_end", 0.0, 1.0)
    if start > end:
        raise InvalidRequest(f"{field}.guidance_start: must be at most guidance_end ({start} > {end})",
                             field=f"{field}.guidance_start")
    unit = ControlNetUnit(
        model=model,
        module=jobflow.resolve_preprocessor(services, module, field=f"{field}.module"),
        image=STAND_IN_ID if image is not None else None,
        mask=STAND_IN_ID if mask is not None else None,
        weight=_number(raw.get("weight", 1.0), f"{field}.weight", 0.0, 2.0),
        guidance_start=start,
        guidance_end=end,
        control_mode=_choice(raw.get("control_mode", 0), f"{field}.control_mode", CONTROL_MODES,
                             CONTROL_BY_NUMBER),
        resize_mode=_choice(raw.get("resize_mode", 1), f"{field}.resize_mode", RESIZE_MODES,
                            RESIZE_BY_NUMBER),
        processor_res=_processor_res(raw.get("processor_res", -1), f"{field}.processor_res"),
        threshold_a=_threshold(raw.get("threshold_a", -1), f"{field}.threshold_a"),
        threshold_b=_threshold(raw.get("threshold_b", -1), f"{field}.threshold_b"),
        pixel_perfect=_flag(raw.get("pixel_perfect", False), f"{field}.pixel_perfect"),
    )
    return WireUnit(field, unit, image, mask)


def _images(raw: dict[str, Any], field: str) -> tuple[str | None, str | None]:
    """(image, mask) as the client sent them; "" and null mean none. ``image`` may be the
    extension's ``{"image": ..., "mask": ...}`` and ``input_image`` is its old name."""
    image = raw.get("image", raw.get("input_image"))
    mask = raw.get("mask")
    if isinstance(image, dict):
        image, mask = image.get("image"), image.get("mask", mask)
    for name, value in (("image", image), ("mask", mask)):
        if value is not None and not isinstance(value, str):
            raise InvalidRequest(f"{field}.{name}: must be a base64 image", field=f"{field}.{name}")
    return image or None, mask or None


def _text(value: Any, field: str) -> str:
    if not isinstance(value, str) or len(value) > 1024:
        raise InvalidRequest(f"{field}: must be text (at most 1024 characters)", field=field)
    return value


def _flag(value: Any, field: str) -> bool:
    if not isinstance(value, bool):
        raise InvalidRequest(f"{field}: must be true or false, got {value!r:.40}", field=field)
    return value


def _number(value: Any, field: str, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or not (
        low <= value <= high
    ):
        raise InvalidRequest(f"{field}: must be a number from {low:g} to {high:g}, got {value!r:.40}",
                             field=field)
    return float(value)


def _choice(value: Any, field: str, labels: dict[str, Any], numbers: tuple[Any, ...]) -> Any:
    if isinstance(value, str) and value.strip().lower() in labels:
        return labels[value.strip().lower()]
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < len(numbers):
        return numbers[value]
    names = ", ".join(f'"{label}"' for label in labels)
    raise InvalidRequest(f"{field}: must be 0 to {len(numbers) - 1} or one of {names}; got {value!r:.40}",
                         field=field)


def _processor_res(value: Any, field: str) -> int:
    """-1: the extension's default (512)."""
    if value == -1 and not isinstance(value, bool):
        return DEFAULT_PROCESSOR_RES
    number = _number(value, field, MIN_PROCESSOR_RES, MAX_PROCESSOR_RES)
    if not number.is_integer():
        raise InvalidRequest(f"{field}: must be a whole number, got {value!r:.40}", field=field)
    return int(number)


def _threshold(value: Any, field: str) -> float | None:
    """-1 or null: the preprocessor's default."""
    if value is None or (value == -1 and not isinstance(value, bool)):
        return None
    return _number(value, field, 0.0, MAX_THRESHOLD)
