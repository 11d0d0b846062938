"""Captions of demo scenes in the data set's own words, so a caption fed back as a prompt to the
demo model draws the scene again: "a large red circle on the left and a small white star on the
top on a blue background". Built on the analyser (numpy and PIL only: no torch, so the server may
call it directly).

The phrasing follows ``dataset.make_caption``: size, colour and class per shape; a position for
every shape except a lone one in the centre (a caption without a position means the centre);
"on a <colour> background" last. ``scene_tags`` gives the same facts as comma-separated tags, the
way a tagger (A1111's deepdanbooru) answers.
"""

from __future__ import annotations

from typing import Any

from sdgate.demo.analyser import Analysis, Region, analyse
from sdgate.demo.dataset import RADIUS

# A shape's larger side, as a fraction of the image, above which it was drawn "large": halfway
# between the two radii's diameters (small shapes span about 0.2 of the image, large ones 0.4).
_LARGE_SPAN = RADIUS["small"] + RADIUS["large"]


def describe_scene(image: Any) -> str:
    """One sentence for a PIL image of a demo scene."""
    scene = analyse(image)
    if not scene.regions:
        return f"a plain {scene.background} background"
    phrases = [_with_article(_shape_words(r, scene)) for r in _reading_order(scene)]
    objs = phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]
    return f"{objs} on a {scene.background} background"


def scene_tags(image: Any) -> str:
    """Comma-separated tags for a PIL image of a demo scene."""
    scene = analyse(image)
    tags = [_shape_words(r, scene) for r in _reading_order(scene)]
    return ", ".join([*tags, f"{scene.background} background"])


def _reading_order(scene: Analysis) -> list[Region]:
    """Left to right, then top to bottom: the order a person reads the scene in."""
    return sorted(scene.regions, key=lambda r: (round(r.cx * 4), r.cy))


def _shape_words(region: Region, scene: Analysis) -> str:
    x0, y0, x1, y1 = region.box
    size = "large" if max(x1 - x0, y1 - y0) > _LARGE_SPAN else "small"
    words = f"{size} {region.color} {region.kind}"
    lone_in_centre = len(scene.regions) == 1 and region.position == "center"
    if not lone_in_centre:
        words += " in the center" if region.position == "center" else f" on the {region.position}"
    return words


def _with_article(text: str) -> str:
    return ("an " if text[0] in "aeiou" else "a ") + text
