"""The procedural data set: deterministic, captions that say what the scene holds, clean renders."""

from __future__ import annotations

import pytest

from sdgate.demo import dataset as ds


def test_samples_are_deterministic_from_their_seed() -> None:
    assert ds.samples(123, 20) == ds.samples(123, 20)
    assert ds.make_sample(5) != ds.make_sample(6)


def test_training_and_evaluation_seed_ranges_do_not_meet() -> None:
    assert ds.EVAL_BASE > 10**8  # training draws seeds below this (see train.StepBatches)


@pytest.mark.parametrize("n_shapes", [None, 1, 2, 3])
def test_captions_parse_back_to_their_scene(n_shapes: int | None) -> None:
    for sample in ds.samples(0, 300, n_shapes):
        parsed = ds.parse_caption(sample.caption)
        scene = sample.scene
        assert parsed.background == scene.background, sample.caption
        assert [(p.color, p.kind) for p in parsed.shapes] == [(s.color, s.kind) for s in scene.shapes]
        for p, s in zip(parsed.shapes, scene.shapes, strict=True):
            assert p.size in (None, s.size), sample.caption
            assert p.position in (None, s.position), sample.caption
        if len(scene.shapes) == 1 and parsed.shapes[0].position is None:
            assert scene.shapes[0].position == "center"  # an unplaced single shape means centred


def test_scenes_cover_every_colour_shape_and_position_without_overlaps() -> None:
    scenes = [s.scene for s in ds.samples(0, 600)]
    shapes = [sh for sc in scenes for sh in sc.shapes]
    assert {sh.kind for sh in shapes} == set(ds.SHAPES)
    assert {sh.color for sh in shapes} == set(ds.COLORS)
    assert {sc.background for sc in scenes} == set(ds.COLORS)
    assert {sh.position for sh in shapes} == set(ds.POSITIONS)
    assert {len(sc.shapes) for sc in scenes} == {1, 2, 3}
    for sc in scenes:
        assert all(sh.color != sc.background for sh in sc.shapes)
        assert not ds._overlapping(list(sc.shapes))


def test_parse_caption_reads_the_phrasings_people_type() -> None:
    parsed = ds.parse_caption("a small blue square on the left and a yellow star, black background")
    assert parsed.background == "black"
    assert [(p.size, p.color, p.kind, p.position) for p in parsed.shapes] == [
        ("small", "blue", "square", "left"),
        (None, "yellow", "star", None),
    ]
    assert ds.parse_caption("red circle, white background").shapes[0].kind == "circle"


def test_render_is_deterministic_and_uses_the_palette() -> None:
    scene = ds.Scene("blue", (ds.Shape("circle", "red", "large", "center", 0.5, 0.5, 0.2),))
    a, b = ds.render([scene], 64), ds.render([scene], 64)
    assert a.shape == (1, 3, 64, 64)
    assert (a == b).all()
    assert [round(float(v) * 255) for v in a[0, :, 32, 32]] == list(ds.PALETTE["red"])
    assert [round(float(v) * 255) for v in a[0, :, 0, 0]] == list(ds.PALETTE["blue"])
