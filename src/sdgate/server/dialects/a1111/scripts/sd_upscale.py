"""A1111's "SD upscale" (``scripts/sd_upscale.py``, img2img only): upscale the first init image,
cut it into tiles of the request's width x height overlapping by ``overlap``, img2img every tile
(one job per ``batch_size`` tiles, as A1111 runs them) and paste the results back with the
overlaps blended. ``n_iter`` repeats the whole upscale with the next seed.

``script_args`` (v1.10.1): info (the UI's HTML note, ignored), overlap, upscaler_index (an index
into ``GET /sdapi/v1/upscalers``; a name is accepted too), scale_factor.
"""

from __future__ import annotations

import io
import math
from typing import Any

from PIL import Image

from sdgate.core.images import encode_png
from sdgate.core.requests import PostprocessRequest
from sdgate.core.tiles import (
    TileGrid,
    combine_grid,
    split_grid,
    tile_counts,
    upscale_builtin,
    upscaled_size,
)
from sdgate.core.upscalers import BUILTIN_UPSCALERS
from sdgate.server.dialects.a1111.scripts.base import (
    ArgSpec,
    JobOutput,
    Plan,
    ScriptContext,
    ScriptOutput,
    as_number,
    check_total,
    script_error,
    with_params,
)
from sdgate.server.validation import resolve_seed

INFO_HTML = (
    '<p style="margin-bottom:0.75em">Will upscale the image by the selected scale factor; '
    "use width and height sliders to set tile size</p>"
)
MAX_SCALE = 8.0  # as the extras routes


class SDUpscale:
    title = "SD upscale"
    img2img_only = True

    def args(self, is_img2img: bool) -> list[ArgSpec]:
        return [
            ArgSpec(None, INFO_HTML),
            ArgSpec("Tile overlap", 64, 0, 256, 16),
            ArgSpec("Upscaler", BUILTIN_UPSCALERS[0], choices=list(BUILTIN_UPSCALERS)),
            ArgSpec("Scale Factor", 2, 0, 4, 1),
        ]

    def _upscaler(self, ctx: ScriptContext, value: Any) -> str:
        names = [*BUILTIN_UPSCALERS, *(f.name for f in ctx.services.catalog.list_files("esrgan"))]
        if isinstance(value, str) and not value.strip().isdigit():
            found = [n for n in names if n.casefold() == value.strip().casefold()]
            if not found:
                raise script_error(self, f"Upscaler: unknown upscaler {value!r} (known: {', '.join(names)})")
            return found[0]
        index = int(as_number(self, value, "Upscaler", lo=0, hi=len(names) - 1))
        return names[index]

    def expand(self, ctx: ScriptContext, args: list[Any]) -> Plan:
        body, settings = ctx.body, ctx.settings
        tile_w, tile_h = body.width, body.height
        overlap = int(as_number(self, args[1], "Tile overlap", lo=0, hi=min(tile_w, tile_h) - 1))
        upscaler = self._upscaler(ctx, args[2])
        scale = as_number(self, args[3], "Scale Factor", lo=0, hi=MAX_SCALE)
        if not ctx.init_images:
            raise script_error(self, "an init image is required")
        if getattr(body, "mask", None):
            raise script_error(self, "a mask cannot be used: each tile is a whole img2img")
        source = Image.open(io.BytesIO(ctx.services.images.get(ctx.init_images[0])))
        width, height = source.size if upscaler == "None" else upscaled_size(*source.size, scale)
        if width * height > 4 * settings.max_pixels or max(width, height) > 4 * settings.max_side:
            raise script_error(self, f"the upscaled image ({width}x{height}) would be too large")
        if width < tile_w or height < tile_h:
            raise script_error(
                self, f"the upscaled image ({width}x{height}) is smaller than one {tile_w}x{tile_h} tile"
            )
        cols, rows = tile_counts(width, height, tile_w, tile_h, overlap)
        batch, repeats = body.batch_size, body.n_iter
        batches = math.ceil(cols * rows / batch)
        check_total(self, cols * rows * repeats, settings)
        seed = resolve_seed(body.seed, field="seed")
        base = body.model_copy(update={"n_iter": 1, "subseed": resolve_seed(body.subseed, field="subseed")})
        ctx.build(base, ("-",))  # everything the route checks, before the upscale's work

        image = self._upscale(ctx, source, upscaler, width, height)
        grid = split_grid(image, tile_w, tile_h, overlap)
        tiles = grid.images()
        ids = [ctx.services.images.put(encode_png(tile), content_type="image/png") for tile in tiles]
        requests = []
        for n in range(repeats):
            for i in range(batches):
                chunk = tuple(ids[i * batch : (i + 1) * batch])
                cell = base.model_copy(update={"batch_size": len(chunk), "seed": seed + n + i})
                requests.append(ctx.build(cell, chunk))
        extra = {"SD upscale overlap": overlap, "SD upscale upscaler": upscaler}

        def assemble(outputs: list[JobOutput]) -> ScriptOutput:
            first = next((t for out in outputs for t in out.infotexts), "")
            info = with_params(first, extra)
            combined = []
            for n in range(repeats):
                done = [p for out in outputs[n * batches : (n + 1) * batches] for p in out.pictures()]
                done += [Image.new("RGB", (tile_w, tile_h))] * (len(tiles) - len(done))  # interrupted
                combined.append(encode_png(_combine(grid, done[: len(tiles)]), info))
            return ScriptOutput(
                combined,
                [info] * repeats,
                info={"all_seeds": [seed + n for n in range(repeats)], "width": width, "height": height},
            )

        return Plan(requests, assemble)

    def _upscale(
        self, ctx: ScriptContext, image: Image.Image, name: str, width: int, height: int
    ) -> Image.Image:
        if name in BUILTIN_UPSCALERS:
            return upscale_builtin(image, name, width, height)
        # A model upscaler runs on a worker, as an extras job (the API process never loads one).
        if ctx.postprocess is None:
            raise script_error(self, f"Upscaler: {name!r} needs a worker to run on")
        source = ctx.services.images.put(encode_png(image), content_type="image/png")
        request = PostprocessRequest(init_images=(source,), resize_mode=1, width=width, height=height,
                                     crop=False, upscaler_1=name)
        pictures = ctx.postprocess(request)
        if not pictures:
            raise script_error(self, f"Upscaler: {name!r} returned no picture")
        return Image.open(io.BytesIO(pictures[0])).convert("RGB")


def _combine(grid: TileGrid, pictures: list[Image.Image]) -> Image.Image:
    return combine_grid(grid.replaced(pictures))
