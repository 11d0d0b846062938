"""ControlNet preprocessors (core.controlnet) on fixed synthetic images against expected outputs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from sdgate.core import controlnet
from sdgate.core.controlnet import (
    annotator_weights_present,
    available,
    fit_control_image,
    pixel_perfect_resolution,
    preprocess,
    resolve_module,
)
from sdgate.core.errors import InvalidRequest
from sdgate.core.requests import ControlResize

BUILTIN = ["none", "invert", "canny", "threshold", "scribble_xdog", "tile_resample", "blur_gaussian"]


# --- fixed images -----------------------------------------------------------------------------------


def white_square(size: int = 128, lo: int = 32, hi: int = 96, level: int = 255) -> Image.Image:
    pixels = np.zeros((size, size, 3), np.uint8)
    pixels[lo:hi, lo:hi] = level
    return Image.fromarray(pixels)


def circle_outline(size: int = 128) -> tuple[Image.Image, np.ndarray]:
    """A black circle outline on white, and the mask of its line."""
    pixels = np.full((size, size, 3), 255, np.uint8)
    cv2.circle(pixels, (size // 2, size // 2), size // 3, (0, 0, 0), 2)
    return Image.fromarray(pixels), pixels[:, :, 0] == 0


def grey_ramp() -> Image.Image:
    """256 x 64: column x has grey level x."""
    row = np.arange(256, dtype=np.uint8)
    return Image.fromarray(np.repeat(np.tile(row, (64, 1))[:, :, None], 3, axis=2))


def as_array(image: Image.Image) -> np.ndarray:
    assert image.mode == "RGB"
    return np.asarray(image)


def step_edges(inside: np.ndarray) -> np.ndarray:
    """Where a 0/1 region changes going down or right: the pixel before each change, where Canny's
    non-maximum suppression keeps a step edge's two equal gradient pixels' first one."""
    edges = np.zeros_like(inside)
    edges[:-1] |= inside[:-1] != inside[1:]
    edges[:, :-1] |= inside[:, :-1] != inside[:, 1:]
    return edges


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


# --- listing and names ------------------------------------------------------------------------------


def test_available_lists_the_weight_free_preprocessors_in_order() -> None:
    assert [p.name for p in available()] == BUILTIN
    assert not any(p.needs_weights for p in available())


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("canny", "canny"),
        ("Canny", "canny"),
        ("  CANNY ", "canny"),
        ("None", "none"),
        ("invert (from white bg & black line)", "invert"),
        ("Invert  (from white bg & black line)", "invert"),
        ("binary", "threshold"),
        ("threshold", "threshold"),
        ("scribble_xdog", "scribble_xdog"),
        ("tile_resample", "tile_resample"),
        ("blur_gaussian", "blur_gaussian"),
    ],
)
def test_resolve_module_takes_names_and_aliases_in_any_case(name: str, expected: str) -> None:
    assert resolve_module(name).name == expected


@pytest.mark.parametrize("name", ["nope", "", "depth_anything_v9"])
def test_unknown_module_is_a_400_naming_module_and_listing_what_is_available(name: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        resolve_module(name)
    assert caught.value.status_code == 400
    assert caught.value.field == "module"
    assert caught.value.message.endswith("available: " + ", ".join(BUILTIN))


@pytest.mark.parametrize(
    "name", ["depth", "depth_midas", "openpose_full", "scribble_hed", "softedge_pidinet"]
)
def test_a_weight_needing_module_is_refused_while_its_weights_are_absent(name: str, tmp_path: Path) -> None:
    with pytest.raises(InvalidRequest) as caught:
        resolve_module(name, tmp_path)
    assert caught.value.field == "module"
    assert "needs an annotator model" in caught.value.message
    assert ", ".join(BUILTIN) in caught.value.message


@pytest.mark.parametrize("folder", ["annotators", "annotator/downloads/midas"])
def test_a_weight_needing_module_is_never_listed_as_if_it_ran(tmp_path: Path, folder: str) -> None:
    """Its weights are found, but no annotator runs here yet: not listed, and refused naming why."""
    assert annotator_weights_present(tmp_path) == []
    (tmp_path / folder).mkdir(parents=True)
    (tmp_path / folder / "dpt_hybrid-midas-501f0c75.pt").write_bytes(b"fake weights")

    present = [p.name for p in annotator_weights_present(tmp_path)]
    assert "depth_midas" in present and "normal_midas" in present  # both load that file
    assert "openpose" not in present
    assert [p.name for p in available(tmp_path)] == BUILTIN
    with pytest.raises(InvalidRequest) as caught:
        resolve_module("DEPTH", tmp_path)  # the alias
    assert caught.value.field == "module"
    assert "'DEPTH' needs an annotator model" in caught.value.message
    with pytest.raises(InvalidRequest) as caught:
        preprocess("depth", white_square())
    assert caught.value.field == "module"


def test_sliders_are_a1111s() -> None:
    canny = resolve_module("canny")
    assert [(s.name, s.value, s.min, s.max) for s in canny.sliders] == [
        ("Canny Low Threshold", 100, 1, 255),
        ("Canny High Threshold", 200, 1, 255),
    ]
    assert [s["name"] for s in canny.a1111_sliders()] == [
        "Preprocessor Resolution",
        "Canny Low Threshold",
        "Canny High Threshold",
    ]
    assert resolve_module("none").a1111_sliders() == []
    assert resolve_module("invert").label == "invert (from white bg & black line)"
    assert [s.value for s in resolve_module("threshold").sliders] == [0]
    assert [s.value for s in resolve_module("scribble_xdog").sliders] == [32]
    assert [(s.min, s.max) for s in resolve_module("tile_resample").sliders] == [(1.0, 8.0)]


# --- none, invert, alpha ----------------------------------------------------------------------------


def test_none_returns_the_image_unchanged_at_its_own_size() -> None:
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (50, 70, 3), dtype=np.uint8)
    out = as_array(preprocess("none", Image.fromarray(pixels), resolution=512))
    assert np.array_equal(out, pixels)


def test_invert_is_exact() -> None:
    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 256, (37, 91, 3), dtype=np.uint8)
    out = as_array(preprocess("invert (from white bg & black line)", Image.fromarray(pixels)))
    assert np.array_equal(out, 255 - pixels)


def test_grey_and_transparent_inputs_become_rgb_with_transparency_on_white() -> None:
    grey = Image.fromarray(np.array([[0, 100], [200, 255]], np.uint8), "L")
    assert np.array_equal(as_array(preprocess("none", grey))[:, :, 1], np.array([[0, 100], [200, 255]]))

    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[0, 0] = (10, 20, 30, 255)  # opaque: kept
    rgba[1, 1] = (10, 20, 30, 0)  # transparent: white
    out = as_array(preprocess("invert", Image.fromarray(rgba, "RGBA")))
    assert tuple(out[0, 0]) == (245, 235, 225)
    assert tuple(out[1, 1]) == (0, 0, 0)


# --- canny ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("resolution", [128, 256])
def test_canny_finds_the_squares_outline(resolution: int) -> None:
    out = as_array(preprocess("canny", white_square(), resolution=resolution))
    assert out.shape == (resolution, resolution, 3)
    assert set(np.unique(out)) <= {0, 255}
    assert np.array_equal(out[:, :, 0], out[:, :, 2])
    scale = resolution // 128
    square = np.zeros((resolution, resolution), bool)
    square[32 * scale : 96 * scale, 32 * scale : 96 * scale] = True
    assert iou(out[:, :, 0] > 0, step_edges(square)) >= 0.9


def test_canny_thresholds_change_the_result() -> None:
    faint = white_square(level=30)  # a step of 30: a Sobel response of 120, under the default high 200
    assert as_array(preprocess("canny", faint, resolution=128)).max() == 0
    found = as_array(preprocess("canny", faint, resolution=128, threshold_a=50, threshold_b=100))[:, :, 0] > 0
    square = np.zeros((128, 128), bool)
    square[32:96, 32:96] = True
    assert iou(found, step_edges(square)) >= 0.9
    # -1 (A1111's API's "default") and None are the default; out of range is clamped to 1..255.
    default = as_array(preprocess("canny", white_square(), resolution=128))
    assert np.array_equal(
        as_array(preprocess("canny", white_square(), resolution=128, threshold_a=-1)), default
    )
    clamped = preprocess("canny", white_square(), resolution=128, threshold_a=1000, threshold_b=1000)
    top = preprocess("canny", white_square(), resolution=128, threshold_a=255, threshold_b=255)
    assert np.array_equal(as_array(clamped), as_array(top))


@pytest.mark.parametrize("field", ["threshold_a", "threshold_b"])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), "100"])
def test_a_threshold_that_is_not_a_finite_number_is_a_400_naming_it(field: str, value: object) -> None:
    with pytest.raises(InvalidRequest) as caught:
        preprocess("canny", white_square(), **{field: value})  # type: ignore[arg-type]
    assert caught.value.field == field


@pytest.mark.parametrize("resolution", [0, 63, 2049, 10**9, float("nan")])
def test_resolution_is_bounded(resolution: float) -> None:
    with pytest.raises(InvalidRequest) as caught:
        preprocess("canny", white_square(), resolution=resolution)  # type: ignore[arg-type]
    assert caught.value.field == "processor_res"


def test_the_detector_works_at_the_resolution_on_the_short_side_keeping_the_aspect() -> None:
    wide = Image.new("RGB", (200, 100))
    assert preprocess("canny", wide, resolution=64).size == (128, 64)
    tall = Image.new("RGB", (100, 300))
    assert preprocess("blur_gaussian", tall, resolution=512).size == (512, 1536)
    # A needle-thin image cannot make a map of millions of pixels a side.
    needle = Image.new("RGB", (4000, 1))
    assert preprocess("threshold", needle, resolution=2048).size == (controlnet.MAX_MAP_SIDE, 2)
    # Modules without a resolution slider keep the input's size.
    assert preprocess("invert", wide, resolution=64).size == (200, 100)
    assert preprocess("tile_resample", wide, resolution=64, threshold_a=2).size == (200, 100)


# --- threshold (binary) -----------------------------------------------------------------------------


def otsu(grey: np.ndarray) -> int:
    """Otsu's threshold by its definition: the t (class 0: <= t) maximising between-class variance."""
    hist = np.bincount(grey.ravel(), minlength=256).astype(np.float64)
    levels = np.arange(256)
    best, best_t = -1.0, 0
    for t in range(255):
        w0, w1 = hist[: t + 1].sum(), hist[t + 1 :].sum()
        if w0 == 0 or w1 == 0:
            continue
        mu0 = (hist[: t + 1] * levels[: t + 1]).sum() / w0
        mu1 = (hist[t + 1 :] * levels[t + 1 :]).sum() / w1
        between = w0 * w1 * (mu0 - mu1) ** 2
        if between > best:
            best, best_t = between, t
    return best_t


@pytest.mark.parametrize("level", [1, 100, 128, 254])
def test_threshold_is_exact_on_a_grey_ramp(level: int) -> None:
    out = as_array(preprocess("threshold", grey_ramp(), resolution=64, threshold_a=level))
    assert out.shape == (64, 256, 3)
    expected = np.where(np.arange(256) <= level, 255, 0)  # A1111's binary: white at or below
    assert np.array_equal(out, np.broadcast_to(expected[None, :, None], out.shape))


@pytest.mark.parametrize("level", [None, 0, 255])
def test_threshold_zero_picks_the_level_by_otsu(level: float | None) -> None:
    ramp = grey_ramp()
    t = otsu(np.asarray(ramp)[:, :, 0])
    assert t == 127
    out = as_array(preprocess("binary", ramp, resolution=64, threshold_a=level))
    assert np.array_equal(out[0, :, 0], np.where(np.arange(256) <= t, 255, 0))

    rng = np.random.default_rng(2)
    pixels = np.where(rng.random((64, 64)) < 0.3, 40, 200).astype(np.uint8) + rng.integers(
        0, 30, (64, 64), np.uint8
    )
    t = otsu(pixels)
    assert 69 <= t < 200
    out = as_array(preprocess("threshold", Image.fromarray(pixels, "L"), resolution=64, threshold_a=level))
    assert np.array_equal(out[:, :, 0], np.where(pixels <= t, 255, 0))


# --- scribble_xdog ----------------------------------------------------------------------------------


def test_xdog_draws_white_lines_where_the_outline_is() -> None:
    image, line = circle_outline()
    out = as_array(preprocess("scribble_xdog", image, resolution=128))[:, :, 0] > 0
    near_line = cv2.dilate(line.astype(np.uint8), np.ones((5, 5), np.uint8)) > 0
    assert (out & ~near_line).sum() == 0  # nothing away from the outline
    assert (out & line).sum() >= 0.95 * line.sum()  # the outline itself found
    # The threshold decides how faint a line still counts: a grey line 30 levels under white does
    # at the default 32, not at 48.
    faint = np.full((128, 128, 3), 255, np.uint8)
    cv2.circle(faint, (64, 64), 42, (225, 225, 225), 2)
    grey_line = faint[:, :, 0] < 255
    found = as_array(preprocess("scribble_xdog", Image.fromarray(faint), resolution=128))[:, :, 0] > 0
    assert (found & grey_line).sum() >= 0.95 * grey_line.sum()
    strict = preprocess("scribble_xdog", Image.fromarray(faint), resolution=128, threshold_a=48)
    assert as_array(strict).max() == 0
    blank = Image.new("RGB", (128, 128), "white")
    assert as_array(preprocess("scribble_xdog", blank, resolution=128)).max() == 0


# --- tile_resample, blur_gaussian -------------------------------------------------------------------


def test_tile_resample_keeps_the_size_and_removes_detail() -> None:
    checker = (np.indices((96, 160)).sum(axis=0) % 2 * 255).astype(np.uint8)
    image = Image.fromarray(checker, "L")
    assert np.array_equal(as_array(preprocess("tile_resample", image, threshold_a=1))[:, :, 0], checker)
    out = as_array(preprocess("tile_resample", image, threshold_a=4))
    assert out.shape == (96, 160, 3)
    assert out[8:-8, 8:-8].std() < 10 < checker.std()  # a checkerboard averages to grey
    assert abs(out[8:-8, 8:-8].mean() - 127.5) < 3
    # The rate is clamped to A1111's 1..8.
    assert np.array_equal(
        as_array(preprocess("tile_resample", image, threshold_a=100)),
        as_array(preprocess("tile_resample", image, threshold_a=8)),
    )


def test_blur_is_monotone_in_sigma() -> None:
    square = white_square()
    source = as_array(square).astype(np.int32)
    changes, slopes = [], []
    for sigma in (0.5, 2, 8, 32):
        blurred = preprocess("blur_gaussian", square, resolution=128, threshold_a=sigma)
        out = as_array(blurred).astype(np.int32)
        assert out.shape == source.shape
        changes.append(np.abs(out - source).sum())
        slopes.append(np.abs(np.diff(out[64, :, 0])).max())  # the edge's steepest step
    assert changes == sorted(changes) and len(set(changes)) == 4
    assert slopes == sorted(slopes, reverse=True) and len(set(slopes)) == 4


# --- fitting a map to the generation ----------------------------------------------------------------


def stripes() -> Image.Image:
    """200 x 100, black border of 4 px; inside: columns 4..49 red, 50..149 white, 150..195 blue."""
    pixels = np.zeros((100, 200, 3), np.uint8)
    pixels[4:-4, 4:50] = (255, 0, 0)
    pixels[4:-4, 50:150] = (255, 255, 255)
    pixels[4:-4, 150:196] = (0, 0, 255)
    return Image.fromarray(pixels)


@pytest.mark.parametrize("mode", list(ControlResize))
@pytest.mark.parametrize("size", [(100, 100), (64, 512), (512, 64), (200, 100), (333, 77)])
def test_every_mode_gives_exactly_the_size(mode: ControlResize, size: tuple[int, int]) -> None:
    assert fit_control_image(stripes(), *size, mode).size == size


def test_just_resize_stretches_everything_in() -> None:
    out = as_array(fit_control_image(stripes(), 100, 100, ControlResize.JUST_RESIZE))
    assert tuple(out[50, 12]) == (255, 0, 0) and tuple(out[50, 50]) == (255, 255, 255)
    assert tuple(out[50, 88]) == (0, 0, 255)


def test_crop_and_resize_covers_and_keeps_the_centre() -> None:
    out = as_array(fit_control_image(stripes(), 100, 100, ControlResize.CROP_AND_RESIZE))
    assert np.all(out[4:-4] == 255)  # only the white middle columns 50..149 are kept
    assert np.all(out[:4] == 0) and np.all(out[-4:] == 0)  # the top and bottom borders too
    tall = as_array(fit_control_image(stripes(), 100, 400, ControlResize.CROP_AND_RESIZE))
    assert np.all(tall[20:-20, 45:55] == 255)  # scaled x4 to 800 x 400: columns 350..449 kept


def test_resize_and_fill_fits_inside_and_pads_with_the_border_colour() -> None:
    out = as_array(fit_control_image(stripes(), 100, 100, ControlResize.RESIZE_AND_FILL))
    assert np.all(out[:25] == 0) and np.all(out[75:] == 0)  # the 100 x 50 map, centred, black above and below
    assert tuple(out[50, 12]) == (255, 0, 0) and tuple(out[50, 50]) == (255, 255, 255)
    assert tuple(out[50, 88]) == (0, 0, 255)
    # An inverted map (white border) is padded with white, as A1111 takes the border's median.
    inverted = preprocess("invert", stripes())
    out = as_array(fit_control_image(inverted, 100, 100, ControlResize.RESIZE_AND_FILL))
    assert np.all(out[:25] == 255) and np.all(out[75:] == 255)
    wide = as_array(fit_control_image(stripes(), 400, 100, ControlResize.RESIZE_AND_FILL))
    assert np.all(wide[:, :100] == 0) and np.all(wide[:, 300:] == 0)
    assert tuple(wide[50, 200]) == (255, 255, 255)


def test_fit_refuses_a_size_it_cannot_make() -> None:
    for size in [(0, 10), (10, -1), (controlnet.MAX_MAP_SIDE + 1, 10)]:
        with pytest.raises(InvalidRequest):
            fit_control_image(stripes(), *size, ControlResize.JUST_RESIZE)


# --- pixel perfect ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("image", "target", "mode", "expected"),
    [
        ((512, 512), (512, 768), ControlResize.CROP_AND_RESIZE, 768),
        ((512, 512), (512, 768), ControlResize.JUST_RESIZE, 768),
        ((512, 512), (512, 768), ControlResize.RESIZE_AND_FILL, 512),
        ((1024, 768), (512, 512), ControlResize.CROP_AND_RESIZE, 512),
        ((1024, 768), (512, 512), ControlResize.RESIZE_AND_FILL, 384),
        ((300, 200), (768, 512), ControlResize.CROP_AND_RESIZE, 512),
        ((1000, 1000), (640, 360), ControlResize.CROP_AND_RESIZE, 640),
        ((1000, 1000), (640, 360), ControlResize.RESIZE_AND_FILL, 360),
        ((8000, 8000), (64, 64), ControlResize.CROP_AND_RESIZE, 64),  # bounded below
        ((64, 64), (2048, 2048), ControlResize.CROP_AND_RESIZE, 2048),
        ((16, 4000), (2048, 2048), ControlResize.CROP_AND_RESIZE, 2048),  # bounded above
    ],
)
def test_pixel_perfect_resolution(
    image: tuple[int, int], target: tuple[int, int], mode: ControlResize, expected: int
) -> None:
    assert pixel_perfect_resolution(image, target, mode) == expected


def test_pixel_perfect_makes_the_map_land_one_to_one() -> None:
    image = Image.new("RGB", (300, 200))
    res = pixel_perfect_resolution(image.size, (768, 512), ControlResize.CROP_AND_RESIZE)
    assert preprocess("canny", image, resolution=res).size == (768, 512)


# --- layering ---------------------------------------------------------------------------------------


def test_importing_the_preprocessors_imports_neither_torch_nor_fastapi() -> None:
    code = (
        "import json, sys\n"
        "import sdgate.core.controlnet\n"
        "print(json.dumps([m for m in ('torch', 'fastapi', 'starlette') if m in sys.modules]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == []
