"""A1111's "X/Y/Z plot" (``scripts/xyz_grid.py``): one job per cell, one grid with axis legends.

``script_args`` (v1.10.1's ``run`` after ``p``): x_type, x_values, x_values_dropdown, y_type,
y_values, y_values_dropdown, z_type, z_values, z_values_dropdown, draw_legend, include_lone_images,
include_sub_grids, no_fixed_seeds, vary_seeds_x, vary_seeds_y, vary_seeds_z, margin_size, csv_mode.
A type is an index into the tab's axis list (``xyz_axes``); its label is accepted too.

The response is A1111's: the Z grid first, then the sub grids (``include_sub_grids``) and the cells
(``include_lone_images``); ``info.infotexts`` always holds the grid's then every cell's. Each cell
runs one image (A1111 keeps only a cell's first image in the API's default setup).
"""

from __future__ import annotations

import csv
import io
import secrets
from dataclasses import dataclass
from typing import Any

from sdgate.core.grid import image_grid
from sdgate.core.grid_annotations import GridAnnotation, draw_grid_annotations
from sdgate.core.images import encode_png
from sdgate.server.dialects.a1111.scripts.base import (
    ArgSpec,
    Body,
    JobOutput,
    Plan,
    ScriptContext,
    ScriptOutput,
    as_bool,
    as_number,
    as_text,
    check_total,
    script_error,
    with_params,
)
from sdgate.server.dialects.a1111.scripts.xyz_axes import Axis, AxisError, axes_for, parse_values
from sdgate.server.validation import RANDOM_SEED_BOUND, resolve_seed

SEED_AXES = ("Seed", "Var. seed")
GRID_AREA_FACTOR = 4  # a grid holds at most this many times settings.max_pixels


@dataclass
class _Dim:
    name: str  # "X", "Y" or "Z"
    axis: Axis
    values: list[Any]
    text: str  # the values as sent, for the grid's infotext

    @property
    def labels(self) -> list[str]:
        return [self.axis.format(v) for v in self.values]


def _csv_line(items: list[Any]) -> str:
    out = io.StringIO()
    csv.writer(out).writerow(items)
    return out.getvalue().strip()


class XYZPlot:
    title = "X/Y/Z plot"
    img2img_only = False

    def args(self, is_img2img: bool) -> list[ArgSpec]:
        labels = [axis.label for axis in axes_for(is_img2img)]
        specs: list[ArgSpec] = []
        for name, default in (("X", labels[1]), ("Y", labels[0]), ("Z", labels[0])):
            specs += [
                ArgSpec(f"{name} type", default, choices=labels),
                ArgSpec(f"{name} values", ""),
                ArgSpec(f"{name} values", None, choices=[]),
            ]
        specs += [
            ArgSpec("Draw legend", True),
            ArgSpec("Include Sub Images", False),
            ArgSpec("Include Sub Grids", False),
            ArgSpec("Keep -1 for seeds", False),
            ArgSpec("Vary seeds for X", False),
            ArgSpec("Vary seeds for Y", False),
            ArgSpec("Vary seeds for Z", False),
            ArgSpec("Grid margins (px)", 0, 0, 500, 2),
            ArgSpec("Use text inputs instead of dropdowns", False),
        ]
        return specs

    def _axis(self, axes: list[Axis], value: Any, name: str) -> Axis:
        if isinstance(value, str) and not value.strip().lstrip("-").isdigit():
            found = [a for a in axes if a.label.casefold() == value.strip().casefold()]
            if not found:
                raise script_error(self, f"{name} type: unknown axis {value!r}")
            return found[0]
        try:
            index = int(value)
        except (TypeError, ValueError):
            raise script_error(self, f"{name} type: must be an axis index or label, got {value!r}") from None
        if not 0 <= index < len(axes):
            raise script_error(self, f"{name} type: axis index {index} is out of range 0..{len(axes) - 1}")
        return axes[index]

    def _dim(self, ctx: ScriptContext, name: str, args: tuple[Any, Any, Any], csv_mode: bool) -> _Dim:
        axis = self._axis(axes_for(ctx.is_img2img), args[0], name)
        if axis.apply is None:
            raise script_error(self, f"{name} type: axis {axis.label!r} is not supported by sdgate")
        text = as_text(self, args[1], f"{name} values")
        dropdown = args[2] if isinstance(args[2], list) else None
        if axis.has_choices and not csv_mode and dropdown:
            text = _csv_line(dropdown)
        try:
            values = parse_values(axis, text, dropdown, csv_mode)
        except AxisError as exc:
            raise script_error(self, f"{name} values ({axis.label}): {exc}") from None
        return _Dim(name, axis, values, text)

    def expand(self, ctx: ScriptContext, args: list[Any]) -> Plan:
        csv_mode = as_bool(self, args[17], "Use text inputs instead of dropdowns")
        legend = as_bool(self, args[9], "Draw legend")
        lone, subgrids = (
            as_bool(self, args[10], "Include Sub Images"),
            as_bool(self, args[11], "Include Sub Grids"),
        )
        keep_random = as_bool(self, args[12], "Keep -1 for seeds")
        vary = [as_bool(self, args[13 + i], f"Vary seeds for {n}") for i, n in enumerate("XYZ")]
        margin = int(as_number(self, args[16], "Grid margins (px)", lo=0, hi=500))
        dims = [
            self._dim(ctx, n, (args[3 * i], args[3 * i + 1], args[3 * i + 2]), csv_mode)
            for i, n in enumerate("XYZ")
        ]
        x, y, z = dims
        check_total(self, len(x.values) * len(y.values) * len(z.values), ctx.settings)
        body = ctx.body.model_copy(update={"batch_size": 1, "n_iter": 1})
        if not keep_random:  # A1111's fix_seed: every cell shares the request's seed
            seeds = {"seed": resolve_seed(body.seed, field="seed")}
            body = body.model_copy(update={**seeds, "subseed": resolve_seed(body.subseed, field="subseed")})
            for dim in dims:
                if dim.axis.label in SEED_AXES:
                    dim.values = [secrets.randbelow(RANDOM_SEED_BOUND) if v == -1 else v for v in dim.values]
        requests = []
        for iz, zv in enumerate(z.values):
            for iy, yv in enumerate(y.values):
                for ix, xv in enumerate(x.values):
                    cell = self._apply(body, ((x, xv), (y, yv), (z, zv)))
                    cell = self._vary_seed(cell, vary, (ix, iy, iz), (len(x.values), len(y.values)))
                    requests.append(ctx.build(cell))
        area = sum((r.width or 512) * (r.height or 512) for r in requests)
        if area > GRID_AREA_FACTOR * ctx.settings.max_pixels:
            raise script_error(
                self,
                f"the grid would hold {area} pixels; at most {GRID_AREA_FACTOR * ctx.settings.max_pixels}",
            )
        extra = self._grid_params(dims, keep_random)

        def assemble(outputs: list[JobOutput]) -> ScriptOutput:
            return self._assemble(
                outputs, dims, extra, legend=legend, lone=lone, subgrids=subgrids, margin=margin
            )

        return Plan(requests, assemble)

    def _apply(self, body: Body, pairs: tuple[tuple[_Dim, Any], ...]) -> Body:
        for dim, value in pairs:
            try:
                body = dim.axis.apply(body, value, dim.values)  # type: ignore[misc]
            except AxisError as exc:
                raise script_error(self, f"{dim.name} values ({dim.axis.label}): {exc}") from None
        return body

    @staticmethod
    def _vary_seed(body: Body, vary: list[bool], index: tuple[int, int, int], dims: tuple[int, int]) -> Body:
        if not any(vary) or not isinstance(body.seed, int) or body.seed < 0:
            return body
        ix, iy, iz = index
        xdim = dims[0] if vary[0] else 1
        ydim = dims[1] if vary[1] else 1
        offset = (ix if vary[0] else 0) + (iy * xdim if vary[1] else 0) + (iz * xdim * ydim if vary[2] else 0)
        return body.model_copy(update={"seed": body.seed + offset})

    def _grid_params(self, dims: list[_Dim], keep_random: bool) -> dict[str, object]:
        extra: dict[str, object] = {"Script": self.title}
        for dim in dims:
            if dim.axis.label == "Nothing":
                continue
            extra[f"{dim.name} Type"] = dim.axis.label
            extra[f"{dim.name} Values"] = dim.text
            if dim.axis.label in SEED_AXES and not keep_random:
                extra[f"Fixed {dim.name} Values"] = ", ".join(str(v) for v in dim.values)
        return extra

    def _assemble(
        self,
        outputs: list[JobOutput],
        dims: list[_Dim],
        extra: dict[str, object],
        *,
        legend: bool,
        lone: bool,
        subgrids: bool,
        margin: int,
    ) -> ScriptOutput:
        x, y, z = dims
        per_grid = len(x.values) * len(y.values)
        cells = [out.first_picture() for out in outputs]
        infos = [out.infotexts[0] if out.infotexts else "" for out in outputs]
        grids = []
        for iz in range(len(z.values)):
            chunk = cells[iz * per_grid : (iz + 1) * per_grid]
            grid = image_grid(chunk, rows=len(y.values))
            if legend:
                cell_w, cell_h = max(c.width for c in chunk), max(c.height for c in chunk)
                grid = draw_grid_annotations(grid, cell_w, cell_h, _texts(x.labels), _texts(y.labels), margin)
            grids.append(grid)
        top = image_grid(grids, rows=1)
        if legend:
            sub_w, sub_h = max(g.width for g in grids), max(g.height for g in grids)
            top = draw_grid_annotations(top, sub_w, sub_h, _texts(z.labels), [[GridAnnotation()]])
        grid_info = with_params(infos[0], extra)
        images, infotexts = [encode_png(top, grid_info)], [grid_info]
        if subgrids:
            for iz, grid in enumerate(grids):
                text = with_params(infos[iz * per_grid], {z.axis.label: z.values[iz]})
                images.append(encode_png(grid, text))
                infotexts.append(text)
        if lone:
            images += [out.pngs[0] for out in outputs if out.pngs]
        return ScriptOutput(images, infotexts + infos, index_of_first_image=1)


def _texts(labels: list[str]) -> list[list[GridAnnotation]]:
    return [[GridAnnotation(label)] for label in labels]
