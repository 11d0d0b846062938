"""A1111's grid layout rules, checked against its formulas by hand."""

from __future__ import annotations

import pytest
from PIL import Image

from sdgate.core.grid import grid_rows, image_grid


@pytest.mark.parametrize(
    ("count", "kwargs", "rows"),
    [
        (1, {}, 1),
        (2, {}, 1),  # round(1.41)
        (3, {}, 2),  # round(1.73)
        (4, {}, 2),
        (6, {}, 2),  # round(2.45)
        (7, {}, 3),  # round(2.65)
        (9, {}, 3),
        (7, {"prevent_empty_spots": True}, 1),  # 7 is prime
        (6, {"prevent_empty_spots": True}, 2),
        (8, {"n_rows": 0, "batch_size": 4}, 4),
        (4, {"n_rows": 3}, 3),
        (2, {"n_rows": 5}, 2),  # never more rows than images
    ],
)
def test_rows(count: int, kwargs: dict, rows: int) -> None:
    assert grid_rows(count, **kwargs) == rows


def test_no_images_no_grid() -> None:
    with pytest.raises(ValueError):
        grid_rows(0)


def test_images_fill_rows_left_to_right_on_white() -> None:
    colours = ["red", "green", "blue"]
    grid = image_grid([Image.new("RGB", (4, 6), c) for c in colours])
    assert grid.size == (2 * 4, 2 * 6)  # 2 rows of 2 columns, one cell empty
    assert grid.getpixel((1, 1)) == (255, 0, 0)
    assert grid.getpixel((5, 1)) == (0, 128, 0)
    assert grid.getpixel((1, 7)) == (0, 0, 255)
    assert grid.getpixel((5, 7)) == (255, 255, 255)


def test_smaller_images_are_centred_in_their_cell() -> None:
    grid = image_grid([Image.new("RGB", (4, 4), "red"), Image.new("RGB", (2, 2), "blue")], rows=1)
    assert grid.size == (8, 4)
    assert grid.getpixel((4, 0)) == (255, 255, 255) and grid.getpixel((5, 1)) == (0, 0, 255)
