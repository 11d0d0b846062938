"""The X/Y/Z plot's axis types, in A1111 v1.10.1's order (``scripts/xyz_grid.axis_options``).

An axis is addressed by its index in the list for its tab (txt2img lists no img2img-only axis and
the other way round), so the order is the wire format: it must stay A1111's. Axes whose setting
sdgate cannot honour are listed (to keep the indices) but refused with a 400 naming them.
"""

from __future__ import annotations

import csv
import io
import itertools
import math
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sdgate.core.infotext import format_value
from sdgate.core.samplers import SCHEDULERS, is_known_sampler
from sdgate.server.dialects.a1111.protocol import Img2ImgRequest
from sdgate.server.dialects.a1111.scripts.base import Body

Apply = Callable[[Body, Any, list[Any]], Body]


class AxisError(ValueError):
    """An axis value that cannot be applied (the caller names the axis in a 400)."""


def _field(name: str) -> Apply:
    def apply(body: Body, value: Any, values: list[Any]) -> Body:
        if name not in type(body).model_fields:
            raise AxisError(
                f"has no effect on {'img2img' if isinstance(body, Img2ImgRequest) else 'txt2img'}"
            )
        return body.model_copy(update={name: value})

    return apply


def _override(key: str) -> Apply:
    def apply(body: Body, value: Any, values: list[Any]) -> Body:
        return body.model_copy(update={"override_settings": {**(body.override_settings or {}), key: value}})

    return apply


def _prompt_sr(body: Body, value: Any, values: list[Any]) -> Body:
    search = values[0]
    if search not in body.prompt and search not in body.negative_prompt:
        raise AxisError(f"did not find {search!r} in prompt or negative prompt")
    return body.model_copy(
        update={
            "prompt": body.prompt.replace(search, value),
            "negative_prompt": body.negative_prompt.replace(search, value),
        }
    )


def _prompt_order(body: Body, value: Any, values: list[Any]) -> Body:
    """A1111's ``apply_order``: the listed tokens swapped into the order given, in place."""
    prompt = body.prompt
    order = sorted((prompt.find(token), token) for token in value)
    parts = []
    for _, token in order:
        at = prompt.find(token)
        parts.append(prompt[:at])
        prompt = prompt[at + len(token) :]
    rebuilt = "".join(part + value[i] for i, part in enumerate(parts))
    return body.model_copy(update={"prompt": rebuilt + prompt})


def _styles(body: Body, value: Any, values: list[Any]) -> Body:
    return body.model_copy(update={"styles": [*(body.styles or []), *str(value).split(",")]})


def _size(body: Body, value: Any, values: list[Any]) -> Body:
    width, _, height = str(value).partition("x")
    try:
        return body.model_copy(update={"width": int(width.strip()), "height": int(height.strip())})
    except ValueError:
        raise AxisError(f"{value!r} is not WIDTHxHEIGHT") from None


def _nothing(body: Body, value: Any, values: list[Any]) -> Body:
    return body


def _sampler_check(values: list[Any]) -> None:
    for value in values:
        if not is_known_sampler(str(value)):
            raise AxisError(f"unknown sampler {value!r} (GET /sdapi/v1/samplers lists them)")


def _scheduler_check(values: list[Any]) -> None:
    known = {s.label.casefold() for s in SCHEDULERS} | {s.name.casefold() for s in SCHEDULERS}
    for value in values:
        if str(value).casefold() not in known:
            raise AxisError(f"unknown schedule type {value!r} (GET /sdapi/v1/schedulers lists them)")


def label_with_name(axis: Axis, value: Any) -> str:
    return f"{axis.label}: {format_value(round(value, 8) if isinstance(value, float) else value)}"


def label_value(axis: Axis, value: Any) -> str:
    return format_value(round(value, 8) if isinstance(value, float) else value)


def label_list(axis: Axis, value: Any) -> str:
    return ", ".join(value)


def label_nothing(axis: Axis, value: Any) -> str:
    return ""


def label_path(axis: Axis, value: Any) -> str:
    return os.path.basename(str(value))


@dataclass(frozen=True)
class Axis:
    label: str
    kind: str  # "int", "float", "str" or "perm" (permutations of the listed tokens)
    apply: Apply | None  # None: sdgate cannot honour this axis
    tab: str | None = None  # "txt2img" / "img2img": only listed there
    fmt: Callable[[Axis, Any], str] = label_with_name
    check: Callable[[list[Any]], None] | None = None
    has_choices: bool = False  # A1111 reads such an axis from its dropdown unless csv_mode

    def format(self, value: Any) -> str:
        return self.fmt(self, value)


def _off(label: str, kind: str = "float", tab: str | None = None, choices: bool = False) -> Axis:
    return Axis(label, kind, None, tab, has_choices=choices)


AXES: tuple[Axis, ...] = (
    Axis("Nothing", "str", _nothing, fmt=label_nothing),
    Axis("Seed", "int", _field("seed")),
    Axis("Var. seed", "int", _field("subseed")),
    Axis("Var. strength", "float", _field("subseed_strength")),
    Axis("Steps", "int", _field("steps")),
    Axis("Hires steps", "int", _field("hr_second_pass_steps"), tab="txt2img"),
    Axis("CFG Scale", "float", _field("cfg_scale")),
    Axis("Image CFG Scale", "float", _field("image_cfg_scale"), tab="img2img"),
    Axis("Prompt S/R", "str", _prompt_sr, fmt=label_value),
    Axis("Prompt order", "perm", _prompt_order, fmt=label_list),
    Axis("Sampler", "str", _field("sampler_name"), "txt2img", label_value, _sampler_check, True),
    Axis(
        "Hires sampler", "str", _field("hr_sampler_name"), "txt2img", check=_sampler_check, has_choices=True
    ),
    Axis("Sampler", "str", _field("sampler_name"), "img2img", label_value, _sampler_check, True),
    Axis("Checkpoint name", "str", _override("sd_model_checkpoint"), fmt=label_path, has_choices=True),
    Axis("Negative Guidance minimum sigma", "float", _field("s_min_uncond")),
    Axis("Sigma Churn", "float", _field("s_churn")),
    Axis("Sigma min", "float", _field("s_tmin")),
    Axis("Sigma max", "float", _field("s_tmax")),
    Axis("Sigma noise", "float", _field("s_noise")),
    Axis("Schedule type", "str", _field("scheduler"), check=_scheduler_check, has_choices=True),
    _off("Schedule min sigma"),
    _off("Schedule max sigma"),
    _off("Schedule rho"),
    _off("Skip Early CFG"),
    _off("Beta schedule alpha"),
    _off("Beta schedule beta"),
    Axis("Eta", "float", _field("eta")),
    Axis("Clip skip", "int", _override("CLIP_stop_at_last_layers")),
    Axis("Denoising", "float", _field("denoising_strength")),
    Axis("Initial noise multiplier", "float", _field("initial_noise_multiplier")),
    _off("Extra noise"),
    Axis("Hires upscaler", "str", _field("hr_upscaler"), tab="txt2img", has_choices=True),
    _off("Cond. Image Mask Weight", tab="img2img"),
    Axis("VAE", "str", _override("sd_vae"), has_choices=True),
    Axis("Styles", "str", _styles, has_choices=True),
    _off("UniPC Order", "int"),
    _off("Face restore", "str"),
    _off("Token merging ratio"),
    _off("Token merging ratio high-res"),
    _off("Always discard next-to-last sigma", "str", choices=True),
    _off("SGM noise multiplier", "str", choices=True),
    Axis("Refiner checkpoint", "str", _field("refiner_checkpoint"), fmt=label_path, has_choices=True),
    Axis("Refiner switch at", "float", _field("refiner_switch_at")),
    _off("RNG source", "str", choices=True),
    _off("FP8 mode", "str", choices=True),
    Axis("Size", "str", _size),
)


def axes_for(is_img2img: bool) -> list[Axis]:
    tab = "img2img" if is_img2img else "txt2img"
    return [axis for axis in AXES if axis.tab in (None, tab)]


# --- values ---------------------------------------------------------------------------------------

_NUM = r"[+-]?\s*\d+(?:\.\d*)?"
RE_INT_RANGE = re.compile(r"\s*([+-]?\s*\d+)\s*-\s*([+-]?\s*\d+)(?:\s*\(([+-]\d+)\s*\))?\s*")
RE_FLOAT_RANGE = re.compile(rf"\s*({_NUM})\s*-\s*({_NUM})(?:\s*\(([+-]\d+(?:\.\d*)?)\s*\))?\s*")
RE_INT_COUNT = re.compile(r"\s*([+-]?\s*\d+)\s*-\s*([+-]?\s*\d+)(?:\s*\[(\d+)\s*])?\s*")
RE_FLOAT_COUNT = re.compile(rf"\s*({_NUM})\s*-\s*({_NUM})(?:\s*\[(\d+(?:\.\d*)?)\s*])?\s*")
MAX_RANGE = 10_000  # values one range may expand to before the job bound is even checked


def csv_values(text: str) -> list[str]:
    """A1111's ``csv_string_to_list_strip``: comma separated, quotes allowed, each stripped."""
    rows = csv.reader(io.StringIO(text))
    return [item.strip() for row in rows for item in row]


def _num(text: str) -> float:
    return float(text.replace(" ", ""))


def _linspace(start: float, stop: float, num: int) -> list[float]:
    if num <= 1:
        return [start][:num]
    return [start + (stop - start) * i / (num - 1) for i in range(num)]


def _expand_int(value: str) -> list[Any]:
    if m := RE_INT_RANGE.fullmatch(value):
        start, end = int(_num(m[1])), int(_num(m[2])) + 1
        step = int(m[3]) if m[3] else 1
        if step == 0 or abs((end - start) // step) > MAX_RANGE:
            raise AxisError(f"range {value!r} is too long")
        return list(range(start, end, step))
    if m := RE_INT_COUNT.fullmatch(value):
        count = int(m[3]) if m[3] else 1
        if count > MAX_RANGE:
            raise AxisError(f"range {value!r} is too long")
        return [int(x) for x in _linspace(_num(m[1]), _num(m[2]), count)]
    return [value]


def _expand_float(value: str) -> list[Any]:
    if m := RE_FLOAT_RANGE.fullmatch(value):
        start, end = _num(m[1]), _num(m[2])
        step = float(m[3]) if m[3] else 1.0
        count = math.ceil((end + step - start) / step) if step else -1
        if not 0 <= count <= MAX_RANGE:
            raise AxisError(f"range {value!r} is too long or empty")
        return [start + i * step for i in range(count)]
    if m := RE_FLOAT_COUNT.fullmatch(value):
        count = int(float(m[3])) if m[3] else 1
        if count > MAX_RANGE:
            raise AxisError(f"range {value!r} is too long")
        return _linspace(_num(m[1]), _num(m[2]), count)
    return [value]


def parse_values(axis: Axis, text: str, dropdown: list[Any] | None, csv_mode: bool) -> list[Any]:
    """A1111's ``process_axis``: the values of one axis, ranges expanded, typed, confirmed."""
    if axis.label == "Nothing":
        return [0]
    # An empty dropdown: A1111 would read nothing; the text box is what such a client meant.
    use_dropdown = axis.has_choices and not csv_mode and dropdown
    raw = [str(v) for v in dropdown or ()] if use_dropdown else csv_values(text)
    if axis.kind == "int":
        raw = [v for item in raw for v in _expand_int(item)]
    elif axis.kind == "float":
        raw = [v for item in raw for v in _expand_float(item)]
    elif axis.kind == "perm":
        if len(raw) > 6:  # 7! = 5040 cells: far past any bound
            raise AxisError("at most 6 tokens can be permuted")
        raw = [list(p) for p in itertools.permutations(raw)]
    try:
        values = [_typed(axis.kind, v) for v in raw]
    except ValueError as exc:
        raise AxisError(f"bad value: {exc}") from None
    if not values:
        raise AxisError("no values given")
    if axis.check is not None:
        axis.check(values)
    return values


def _typed(kind: str, value: Any) -> Any:
    if kind == "int":
        return int(value)
    if kind == "float":
        number = float(value)
        if not math.isfinite(number):
            raise ValueError(f"{value!r} is not a finite number")
        return number
    return value
