"""A deterministic scene analyser (no learning): background colour, and each shape's colour, class
and position, read from an image by geometry alone.

1. Downscale to 128x128 (box filter) and give every pixel its nearest named colour (the data
   set's palette).
2. Background: the most common colour along the border.
3. Shapes: connected regions of pixels far from the background colour, larger than a minimum.
4. Per region: colour by majority of its clearly coloured pixels; class from its mask's geometry
   (a hole means ring; low solidity means star; else fill of the bounding box separates square,
   circle and triangle); position from the centroid (same five regions the data set draws into).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np

from sdgate.demo.dataset import COLORS, PALETTE

GRID = 128
MIN_AREA = 60  # pixels of the 128x128 grid; the smallest drawn shape covers about 250
_PALETTE = np.array([PALETTE[c] for c in COLORS], dtype=np.float32)


@dataclass(frozen=True)
class Region:
    color: str
    kind: str
    position: str
    area: float  # fraction of the image
    cx: float
    cy: float
    fill: float
    solidity: float
    hole: float
    box: tuple[float, float, float, float]  # x0, y0, x1, y1 as fractions of the image


@dataclass(frozen=True)
class Analysis:
    background: str
    regions: tuple[Region, ...]  # largest first


def analyse(image: Any) -> Analysis:
    """Analyse a PIL image (any size, RGB)."""
    small = image.convert("RGB").resize((GRID, GRID), resample=_box())
    rgb = np.asarray(small, dtype=np.float32)
    dist = ((rgb[:, :, None, :] - _PALETTE[None, None]) ** 2).sum(-1)
    labels = dist.argmin(-1)
    nearest = np.sqrt(dist.min(-1))
    border = np.concatenate(
        [labels[:2].ravel(), labels[-2:].ravel(), labels[:, :2].ravel(), labels[:, -2:].ravel()]
    )
    bg = int(np.bincount(border, minlength=len(COLORS)).argmax())
    far = np.sqrt(((rgb - _PALETTE[bg]) ** 2).sum(-1)) > 60.0
    regions = []
    for pixels in _components(far):
        if len(pixels) < MIN_AREA:
            continue
        regions.append(_describe(pixels, labels, nearest, bg))
    regions.sort(key=lambda r: -r.area)
    return Analysis(COLORS[bg], tuple(regions))


def _box() -> Any:
    from PIL import Image

    return Image.Resampling.BOX


def _components(mask: np.ndarray) -> list[np.ndarray]:
    """4-connected components of a boolean mask, as arrays of (row, col)."""
    h, w = mask.shape
    seen = np.zeros_like(mask)
    out = []
    for start in zip(*np.nonzero(mask), strict=True):
        if seen[start]:
            continue
        seen[start] = True
        queue = deque([start])
        pixels = []
        while queue:
            r, c = queue.popleft()
            pixels.append((r, c))
            for nr, nc in ((r - 1, c), (r + 1, c), (r, c - 1), (r, c + 1)):
                if 0 <= nr < h and 0 <= nc < w and mask[nr, nc] and not seen[nr, nc]:
                    seen[nr, nc] = True
                    queue.append((nr, nc))
        out.append(np.array(pixels))
    return out


def _describe(pixels: np.ndarray, labels: np.ndarray, nearest: np.ndarray, bg: int) -> Region:
    rows, cols = pixels[:, 0], pixels[:, 1]
    r0, c0 = rows.min(), cols.min()
    mask = np.zeros((rows.max() - r0 + 3, cols.max() - c0 + 3), dtype=bool)
    mask[rows - r0 + 1, cols - c0 + 1] = True
    filled = _fill_holes(mask)
    area, filled_area = mask.sum(), filled.sum()
    bbox = (rows.max() - r0 + 1) * (cols.max() - c0 + 1)
    solidity = filled_area / max(_hull_area(filled), 1.0)
    fill = filled_area / bbox
    hole = 1.0 - area / filled_area
    fr, fc = np.nonzero(filled)
    cy = (fr.mean() + r0 - 1 + 0.5) / GRID
    cx = (fc.mean() + c0 - 1 + 0.5) / GRID
    return Region(
        color=COLORS[_majority_colour(labels[rows, cols], nearest[rows, cols], bg)],
        kind=classify_shape(fill=fill, solidity=solidity, hole=hole),
        position=classify_position(cx, cy),
        area=float(area) / GRID**2,
        cx=float(cx),
        cy=float(cy),
        fill=float(fill),
        solidity=float(solidity),
        hole=float(hole),
        box=(c0 / GRID, r0 / GRID, (cols.max() + 1) / GRID, (rows.max() + 1) / GRID),
    )


def _majority_colour(labels: np.ndarray, nearest: np.ndarray, bg: int) -> int:
    clear = labels[(nearest < 45.0) & (labels != bg)]
    pool = clear if clear.size >= 8 else labels[labels != bg]
    if pool.size == 0:
        pool = labels
    return int(np.bincount(pool, minlength=len(COLORS)).argmax())


def classify_shape(*, fill: float, solidity: float, hole: float) -> str:
    if hole > 0.08:
        return "ring"
    if solidity < 0.75:
        return "star"
    if fill > 0.88:
        return "square"
    if fill > 0.64:
        return "circle"
    return "triangle"


def classify_position(cx: float, cy: float) -> str:
    dx, dy = cx - 0.5, cy - 0.5
    if max(abs(dx), abs(dy)) < 0.125:
        return "center"
    if abs(dx) >= abs(dy):
        return "left" if dx < 0 else "right"
    return "top" if dy < 0 else "bottom"


def _fill_holes(mask: np.ndarray) -> np.ndarray:
    """The mask with every background pocket not reachable from its (padded) border filled."""
    h, w = mask.shape
    outside = np.zeros_like(mask)
    queue = deque((r, c) for r in range(h) for c in (0, w - 1) if not mask[r, c])
    queue.extend((r, c) for c in range(w) for r in (0, h - 1) if not mask[r, c])
    for rc in queue:
        outside[rc] = True
    while queue:
        r, c = queue.popleft()
        for nr, nc in ((r - 1, c), (r + 1, c), (r, c - 1), (r, c + 1)):
            if 0 <= nr < h and 0 <= nc < w and not mask[nr, nc] and not outside[nr, nc]:
                outside[nr, nc] = True
                queue.append((nr, nc))
    return ~outside


def _hull_area(mask: np.ndarray) -> float:
    """Area of the convex hull of the mask's pixel squares (monotone chain over pixel corners)."""
    rows, cols = np.nonzero(mask)
    corners = np.concatenate(
        [np.stack([cols + dx, rows + dy], axis=1) for dx in (0, 1) for dy in (0, 1)]
    )
    points = sorted(set(map(tuple, corners.tolist())))
    if len(points) < 3:
        return 0.0

    def cross(o: tuple[int, int], a: tuple[int, int], b: tuple[int, int]) -> int:
        return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])

    lower: list[tuple[int, int]] = []
    upper: list[tuple[int, int]] = []
    for p in points:
        while len(lower) >= 2 and cross(lower[-2], lower[-1], p) <= 0:
            lower.pop()
        lower.append(p)
    for p in reversed(points):
        while len(upper) >= 2 and cross(upper[-2], upper[-1], p) <= 0:
            upper.pop()
        upper.append(p)
    hull = lower[:-1] + upper[:-1]
    xs = np.array([p[0] for p in hull], dtype=np.float64)
    ys = np.array([p[1] for p in hull], dtype=np.float64)
    return float(abs(np.dot(xs, np.roll(ys, 1)) - np.dot(ys, np.roll(xs, 1))) / 2)
