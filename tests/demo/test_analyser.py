"""The analyser reads clean renders perfectly, at both client sizes."""

from __future__ import annotations

import pytest

from sdgate.demo import analyser as an
from sdgate.demo import dataset as ds
from sdgate.demo import evaluate as ev


def _pil(tensor):  # type: ignore[no-untyped-def]
    from PIL import Image

    return Image.fromarray((tensor.permute(1, 2, 0) * 255).round().byte().numpy())


@pytest.mark.parametrize("size", [256, 512])
def test_analyser_is_exact_on_clean_renders(size: int) -> None:
    samples = [s for n, count in ((1, 24), (2, 16), (3, 10)) for s in ds.samples(ds.EVAL_BASE, count, n)]
    images = ds.render([s.scene for s in samples], size)
    for sample, image in zip(samples, images, strict=True):
        found = an.analyse(_pil(image))
        assert len(found.regions) == len(sample.scene.shapes), sample.caption
        for row in ev.score_multi(sample.scene, found):
            assert all(row.values()), (sample.caption, row, found)


def test_every_shape_class_is_told_apart() -> None:
    for kind in ds.SHAPES:
        for size in ("small", "large"):
            shape = ds.Shape(kind, "white", size, "center", 0.5, 0.5, ds.RADIUS[size])
            found = an.analyse(_pil(ds.render([ds.Scene("black", (shape,))], 256)[0]))
            assert [r.kind for r in found.regions] == [kind]


def test_blank_image_has_no_shapes() -> None:
    from PIL import Image

    found = an.analyse(Image.new("RGB", (256, 256), ds.PALETTE["green"]))
    assert found.background == "green"
    assert found.regions == ()


def test_scoring_matches_shapes_to_regions_in_any_order() -> None:
    scene = ds.Scene("white", (
        ds.Shape("circle", "red", "small", "left", 0.25, 0.5, 0.1),
        ds.Shape("star", "blue", "small", "right", 0.75, 0.5, 0.1),
    ))
    box = (0.0, 0.0, 0.1, 0.1)
    star = an.Region("blue", "star", "right", 0.02, 0.75, 0.5, 0.4, 0.6, 0.0, box)
    wrong = an.Region("red", "square", "left", 0.02, 0.25, 0.5, 1.0, 1.0, 0.0, box)
    rows = ev.score_multi(scene, an.Analysis("white", (star, wrong)))
    assert rows[0] == {"background": True, "color": True, "shape": False, "position": True}
    assert rows[1] == {"background": True, "color": True, "shape": True, "position": True}
    assert ev.score_one(scene, an.Analysis("black", ()))["background"] is False
