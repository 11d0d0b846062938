"""The procedural shapes data set: scenes, captions in several phrasings, and a torch renderer.

A scene is a plain background and one to three shapes, each with a colour, a class, a size and
one of five positions. Everything is deterministic from an integer seed: sample ``i`` of a split is
``make_sample(base + i)``. Geometry is in fractions of the image side, so a scene renders the same
at any resolution; the renderer draws anti-aliased signed-distance shapes on any torch device.
"""

from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass
from typing import Any

# Named colours (sRGB 0-255). The analyser classifies pixels against this same table.
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "orange": (255, 140, 0),
    "yellow": (255, 225, 20),
    "green": (30, 160, 50),
    "blue": (30, 70, 220),
    "purple": (130, 40, 170),
    "pink": (255, 130, 190),
    "brown": (120, 70, 30),
    "white": (245, 245, 245),
    "black": (15, 15, 15),
    "gray": (128, 128, 128),
}
COLORS: tuple[str, ...] = tuple(PALETTE)
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "ring")
SIZES: tuple[str, ...] = ("small", "large")
POSITIONS: dict[str, tuple[float, float]] = {
    "left": (0.25, 0.5),
    "right": (0.75, 0.5),
    "top": (0.5, 0.25),
    "bottom": (0.5, 0.75),
    "center": (0.5, 0.5),
}
RADIUS = {"small": 0.10, "large": 0.20}
# How far each class reaches from its centre, in units of its radius (for overlap checks).
EXTENT = {"circle": 1.0, "square": 0.85 * math.sqrt(2), "triangle": 1.1, "star": 1.1, "ring": 1.0}

# Seed ranges: training draws from TRAIN_BASE up, evaluation from EVAL_BASE up (never overlapping).
TRAIN_BASE = 0
EVAL_BASE = 1_000_000_000


@dataclass(frozen=True)
class Shape:
    kind: str
    color: str
    size: str
    position: str
    cx: float
    cy: float
    radius: float


@dataclass(frozen=True)
class Scene:
    background: str
    shapes: tuple[Shape, ...]


@dataclass(frozen=True)
class Sample:
    seed: int
    scene: Scene
    caption: str


# ---------------------------------------------------------------------------------------------
# Scenes


def make_scene(rng: random.Random, n_shapes: int | None = None) -> Scene:
    if n_shapes is None:
        n_shapes = rng.choices((1, 2, 3), weights=(45, 35, 20))[0]
    background = rng.choice(COLORS)
    positions = rng.sample(list(POSITIONS), n_shapes)
    if n_shapes == 1 and rng.random() < 0.35:
        positions = ["center"]  # the default composition: what a caption without a position means
    picked: set[tuple[str, str]] = set()
    specs = []
    for position in positions:
        while True:
            kind = rng.choice(SHAPES)
            color = rng.choice([c for c in COLORS if c != background])
            if (kind, color) not in picked:
                break
        picked.add((kind, color))
        specs.append((kind, color, rng.choice(SIZES), position))
    return Scene(background, _place(rng, specs))


def _place(rng: random.Random, specs: list[tuple[str, str, str, str]]) -> tuple[Shape, ...]:
    """Jittered centres and radii, shrinking to small (then un-jittered) until nothing overlaps."""
    for attempt in range(40):
        if attempt == 20:
            specs = [(k, c, "small", p) for k, c, _, p in specs]
        jitter = 0.025 if attempt < 30 else 0.0
        shapes = []
        for kind, color, size, position in specs:
            px, py = POSITIONS[position]
            scale = rng.uniform(0.92, 1.08) if attempt < 30 else 1.0
            shapes.append(
                Shape(
                    kind, color, size, position,
                    px + rng.uniform(-jitter, jitter),
                    py + rng.uniform(-jitter, jitter),
                    RADIUS[size] * scale,
                )
            )
        if not _overlapping(shapes):
            return tuple(shapes)
        if attempt < 20 and len(specs) > 1 and attempt % 4 == 3:
            specs = [(k, c, "small", p) for k, c, _, p in specs]
    return tuple(shapes)


def _overlapping(shapes: list[Shape]) -> bool:
    for i, a in enumerate(shapes):
        for b in shapes[i + 1 :]:
            gap = math.hypot(a.cx - b.cx, a.cy - b.cy) - a.radius * EXTENT[a.kind] - b.radius * EXTENT[b.kind]
            if gap < 0.02:
                return True
    return False


# ---------------------------------------------------------------------------------------------
# Captions

_POSITION_PHRASES = {
    "left": ("on the left", "on the left side", "at the left"),
    "right": ("on the right", "on the right side", "at the right"),
    "top": ("at the top", "at the top of the image", "near the top"),
    "bottom": ("at the bottom", "at the bottom of the image", "near the bottom"),
    "center": ("in the center", "in the middle", "in the centre"),
}
_SIZE_WORDS = {"small": ("small", "small", "tiny"), "large": ("large", "big", "large")}


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _shape_phrase(rng: random.Random, shape: Shape, *, bare: bool, say_position: bool) -> str:
    words = []
    if rng.random() < 0.55:
        words.append(rng.choice(_SIZE_WORDS[shape.size]))
    words += [shape.color, shape.kind]
    text = " ".join(words)
    if not bare:
        text = f"{_article(text)} {text}"
    if say_position:
        text += " " + rng.choice(_POSITION_PHRASES[shape.position])
    return text


def make_caption(rng: random.Random, scene: Scene) -> str:
    bare = rng.random() < 0.35
    parts = []
    for shape in scene.shapes:
        if len(scene.shapes) == 1:
            say = shape.position != "center" or rng.random() < 0.4
        else:
            say = rng.random() < 0.75
        parts.append(_shape_phrase(rng, shape, bare=bare, say_position=say))
    if len(parts) == 1:
        objs = parts[0]
    elif rng.random() < 0.5:
        objs = " and ".join(parts)
    else:
        objs = ", ".join(parts[:-1]) + " and " + parts[-1]
    bg = scene.background
    templates = (
        "{objs} on a {bg} background",
        "{objs}, {bg} background",
        "a {bg} background with {objs}",
        "{objs} on {bg}",
        "{objs} against a {bg} background",
        "{objs} on a plain {bg} background",
    )
    return rng.choice(templates).format(objs=objs, bg=bg)


def make_sample(seed: int, n_shapes: int | None = None) -> Sample:
    rng = random.Random(seed * 7919 + (n_shapes or 0))
    scene = make_scene(rng, n_shapes)
    return Sample(seed, scene, make_caption(rng, scene))


def samples(base: int, count: int, n_shapes: int | None = None) -> list[Sample]:
    return [make_sample(base + i, n_shapes) for i in range(count)]


# ---------------------------------------------------------------------------------------------
# Parsing captions back (tests, and scoring free-form prompts)

_COLOR_RE = "|".join(COLORS)
_SHAPE_RE = re.compile(
    rf"(?:\b(small|large|big|tiny)\s+)?\b({_COLOR_RE})\s+({'|'.join(SHAPES)})\b"
    r"(?:\s+(?:on|at|in|near)\s+the\s+(left|right|top|bottom|center|centre|middle)\b)?"
)
_BG_RE = re.compile(rf"\b({_COLOR_RE})\s+background\b|\bon\s+(?:a\s+)?({_COLOR_RE})\s*$")
_POS_WORD = {"centre": "center", "middle": "center"}


@dataclass(frozen=True)
class ParsedShape:
    kind: str
    color: str
    size: str | None
    position: str | None


@dataclass(frozen=True)
class ParsedCaption:
    background: str | None
    shapes: tuple[ParsedShape, ...]


def parse_caption(text: str) -> ParsedCaption:
    text = text.lower().strip()
    bg_match = _BG_RE.search(text)
    background = (bg_match.group(1) or bg_match.group(2)) if bg_match else None
    shapes = []
    for m in _SHAPE_RE.finditer(text):
        size = {"big": "large", "tiny": "small"}.get(m.group(1) or "", m.group(1))
        pos = _POS_WORD.get(m.group(4) or "", m.group(4))
        shapes.append(ParsedShape(m.group(3), m.group(2), size, pos))
    return ParsedCaption(background, tuple(shapes))


# ---------------------------------------------------------------------------------------------
# Rendering


def scene_tensors(scenes: list[Scene], max_shapes: int = 3) -> dict[str, Any]:
    """Pack scenes into tensors: background rgb (B,3), per slot kind/rgb/centre/radius/valid."""
    import torch

    b = len(scenes)
    bg = torch.zeros(b, 3)
    kind = torch.zeros(b, max_shapes, dtype=torch.long)
    rgb = torch.zeros(b, max_shapes, 3)
    geo = torch.zeros(b, max_shapes, 3)
    valid = torch.zeros(b, max_shapes)
    for i, scene in enumerate(scenes):
        bg[i] = torch.tensor(PALETTE[scene.background]) / 255.0
        for j, s in enumerate(scene.shapes):
            kind[i, j] = SHAPES.index(s.kind)
            rgb[i, j] = torch.tensor(PALETTE[s.color]) / 255.0
            geo[i, j] = torch.tensor([s.cx, s.cy, s.radius])
            valid[i, j] = 1.0
    return {"bg": bg, "kind": kind, "rgb": rgb, "geo": geo, "valid": valid}


def render(scenes: list[Scene], size: int, device: Any = "cpu") -> Any:
    """Render scenes to a float tensor (B,3,size,size) in [0,1]."""
    packed = {k: v.to(device) for k, v in scene_tensors(scenes).items()}
    return render_packed(packed, size)


def render_packed(packed: dict[str, Any], size: int) -> Any:
    import torch

    bg, kind, rgb, geo, valid = (packed[k] for k in ("bg", "kind", "rgb", "geo", "valid"))
    b, slots = kind.shape
    device = bg.device
    coords = (torch.arange(size, device=device, dtype=torch.float32) + 0.5) / size
    img = bg[:, :, None, None].expand(b, 3, size, size).clone()
    for j in range(slots):
        px = coords[None, None, :] - geo[:, j, 0, None, None]
        # y up (maths convention) so that triangles and stars point to the top of the image
        py = geo[:, j, 1, None, None] - coords[None, :, None]
        r = geo[:, j, 2, None, None]
        dists = torch.stack(
            [_sd_circle(px, py, r), _sd_square(px, py, r), _sd_triangle(px, py, r),
             _sd_star(px, py, r), _sd_ring(px, py, r)],
            dim=1,
        )
        d = torch.gather(dists, 1, kind[:, j, None, None, None].expand(b, 1, size, size))
        alpha = (0.5 - d * size).clamp(0.0, 1.0) * valid[:, j, None, None, None]
        img = img * (1 - alpha) + rgb[:, j, :, None, None] * alpha
    return img


def _sd_circle(px: Any, py: Any, r: Any) -> Any:
    return (px * px + py * py).sqrt() - r


def _sd_ring(px: Any, py: Any, r: Any) -> Any:
    inner = 0.55 * r
    return ((px * px + py * py).sqrt() - (r + inner) / 2).abs() - (r - inner) / 2


def _sd_square(px: Any, py: Any, r: Any) -> Any:
    half = 0.85 * r
    dx, dy = px.abs() - half, py.abs() - half
    outside = (dx.clamp(min=0) ** 2 + dy.clamp(min=0) ** 2).sqrt()
    return outside + dx.maximum(dy).clamp(max=0)


def _sd_triangle(px: Any, py: Any, r: Any) -> Any:
    import torch

    k = math.sqrt(3.0)
    h = 1.1 * r * k / 2  # half side of an equilateral triangle with circumradius 1.1 r
    x = px.abs() - h
    y = py + h / k
    fold = (x + k * y) > 0
    x, y = torch.where(fold, (x - k * y) / 2, x), torch.where(fold, (-k * x - y) / 2, y)
    x = x - torch.maximum(x.clamp(max=0.0), -2 * h)
    return -(x * x + y * y).sqrt() * torch.sign(y)


def _sd_star(px: Any, py: Any, r: Any) -> Any:
    import torch

    outer = 1.1 * r
    rf = 0.45
    k1x, k1y = 0.809016994375, -0.587785252292
    k2x, k2y = -k1x, k1y
    x, y = px.abs(), py
    d = (k1x * x + k1y * y).clamp(min=0) * 2
    x, y = x - d * k1x, y - d * k1y
    d = (k2x * x + k2y * y).clamp(min=0) * 2
    x, y = x - d * k2x, y - d * k2y
    x = x.abs()
    y = y - outer
    bax, bay = rf * -k1y * outer, rf * k1x * outer - outer
    # iq's sdStar5 with the star scaled by `outer` (ba scales with it)
    h = ((x * bax + y * bay) / (bax * bax + bay * bay)).clamp(0.0, 1.0)
    dx, dy = x - bax * h, y - bay * h
    return (dx * dx + dy * dy).sqrt() * torch.sign(y * bax - x * bay)
