"""A1111's tiling for SD upscale (``modules/images.split_grid`` / ``combine_grid``) and the upscale
size rule of ``modules/upscaler.Upscaler.upscale``.

An image is cut into tiles of ``tile_w`` x ``tile_h`` that overlap by at least ``overlap`` pixels
(spread evenly, the last one flush with the edge); ``combine_grid`` pastes processed tiles back,
blending each overlap with a linear ramp so seams fade.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from PIL import Image


@dataclass
class TileRow:
    y: int
    height: int
    tiles: list[tuple[int, int, Image.Image]] = field(default_factory=list)  # (x, width, tile)


@dataclass
class TileGrid:
    tile_w: int
    tile_h: int
    image_w: int
    image_h: int
    overlap: int
    rows: list[TileRow] = field(default_factory=list)

    @property
    def count(self) -> int:
        return sum(len(row.tiles) for row in self.rows)

    def images(self) -> list[Image.Image]:
        return [tile for row in self.rows for _, _, tile in row.tiles]

    def replaced(self, images: list[Image.Image]) -> TileGrid:
        """The same layout holding ``images`` (in reading order) instead of the cut tiles."""
        it = iter(images)
        rows = [TileRow(r.y, r.height, [(x, w, next(it)) for x, w, _ in r.tiles]) for r in self.rows]
        return TileGrid(self.tile_w, self.tile_h, self.image_w, self.image_h, self.overlap, rows)


def tile_counts(width: int, height: int, tile_w: int, tile_h: int, overlap: int) -> tuple[int, int]:
    """(columns, rows) ``split_grid`` makes, without cutting anything."""
    cols = math.ceil((width - overlap) / (tile_w - overlap))
    rows = math.ceil((height - overlap) / (tile_h - overlap))
    return max(1, cols), max(1, rows)


def split_grid(image: Image.Image, tile_w: int, tile_h: int, overlap: int) -> TileGrid:
    """The caller guarantees ``0 <= overlap < tile`` and an image at least one tile large."""
    w, h = image.size
    cols, rows = tile_counts(w, h, tile_w, tile_h, overlap)
    dx = (w - tile_w) / (cols - 1) if cols > 1 else 0
    dy = (h - tile_h) / (rows - 1) if rows > 1 else 0
    grid = TileGrid(tile_w, tile_h, w, h, overlap)
    for row in range(rows):
        y = int(row * dy)
        if y + tile_h >= h:
            y = h - tile_h
        tiles = []
        for col in range(cols):
            x = int(col * dx)
            if x + tile_w >= w:
                x = w - tile_w
            tiles.append((x, tile_w, image.crop((x, y, x + tile_w, y + tile_h))))
        grid.rows.append(TileRow(y, tile_h, tiles))
    return grid


def _ramp(width: int, height: int, *, horizontal: bool) -> Image.Image:
    """An 'L' mask rising from 0 to ~255 across ``width`` (horizontal) or down ``height``."""
    n = width if horizontal else height
    values = [int(i * 255 / n) for i in range(n)]
    line = Image.new("L", (n, 1) if horizontal else (1, n))
    line.putdata(values)
    return line.resize((width, height), Image.Resampling.NEAREST)


def combine_grid(grid: TileGrid) -> Image.Image:
    o = grid.overlap
    combined = Image.new("RGB", (grid.image_w, grid.image_h))
    mask_w = _ramp(o, grid.tile_h, horizontal=True) if o else None
    mask_h = _ramp(grid.image_w, o, horizontal=False) if o else None
    for row in grid.rows:
        line = Image.new("RGB", (grid.image_w, row.height))
        for x, w, tile in row.tiles:
            tile = tile.convert("RGB")
            if tile.size != (w, row.height):
                tile = tile.resize((w, row.height), Image.Resampling.LANCZOS)
            if x == 0 or mask_w is None:
                line.paste(tile, (x, 0))
                continue
            line.paste(tile.crop((0, 0, o, row.height)), (x, 0), mask=mask_w)
            line.paste(tile.crop((o, 0, w, row.height)), (x + o, 0))
        if row.y == 0 or mask_h is None:
            combined.paste(line, (0, row.y))
            continue
        combined.paste(line.crop((0, 0, line.width, o)), (0, row.y), mask=mask_h)
        combined.paste(line.crop((0, o, line.width, row.height)), (0, row.y + o))
    return combined


def upscaled_size(width: int, height: int, scale: float) -> tuple[int, int]:
    """A1111's upscaler target: each side times ``scale``, floored to a multiple of 8."""
    return int((width * scale) // 8 * 8), int((height * scale) // 8 * 8)


def upscale_builtin(image: Image.Image, name: str, width: int, height: int) -> Image.Image:
    """The upscalers that need no model: ``Lanczos`` and ``Nearest`` (``None`` leaves it alone)."""
    image = image.convert("RGB")
    if name == "None" or image.size == (width, height):
        return image
    resample = Image.Resampling.NEAREST if name == "Nearest" else Image.Resampling.LANCZOS
    return image.resize((width, height), resample)
