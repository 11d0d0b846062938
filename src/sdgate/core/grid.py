"""A1111's image grid (``modules/images.image_grid``): a batch pasted into rows and columns."""

from __future__ import annotations

import math
from collections.abc import Sequence

from PIL import Image, ImageColor


def grid_rows(count: int, *, n_rows: int = -1, batch_size: int = 1, prevent_empty_spots: bool = False) -> int:
    """How many rows A1111 uses for ``count`` images.

    ``n_rows`` > 0 is taken as is, 0 means one row per batch (``batch_size`` images a row), and -1
    (the default) means about sqrt(count) rows; with ``prevent_empty_spots`` the largest row count
    that divides ``count`` at or below the square root.
    """
    if count < 1:
        raise ValueError("a grid needs at least one image")
    if n_rows > 0:
        rows = n_rows
    elif n_rows == 0:
        rows = batch_size
    elif prevent_empty_spots:
        rows = math.floor(math.sqrt(count))
        while count % rows:
            rows -= 1
    else:
        rows = round(math.sqrt(count))
    return max(1, min(rows, count))


def image_grid(
    images: Sequence[Image.Image],
    *,
    rows: int | None = None,
    n_rows: int = -1,
    batch_size: int = 1,
    prevent_empty_spots: bool = False,
    background: str = "#ffffff",
) -> Image.Image:
    """The images left to right, top to bottom, each in a cell the size of the largest (centred)."""
    if rows is None:
        rows = grid_rows(
            len(images), n_rows=n_rows, batch_size=batch_size, prevent_empty_spots=prevent_empty_spots
        )
    rows = max(1, min(rows, len(images)))
    cols = math.ceil(len(images) / rows)
    w = max(img.width for img in images)
    h = max(img.height for img in images)
    grid = Image.new("RGB", (cols * w, rows * h), ImageColor.getcolor(background, "RGB"))
    for i, img in enumerate(images):
        x = (i % cols) * w + (w - img.width) // 2
        y = (i // cols) * h + (h - img.height) // 2
        grid.paste(img, (x, y))
    return grid
