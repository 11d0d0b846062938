"""ControlNet preprocessors that need no torch, and fitting a control map to a generation's size.

A ControlNet unit's ``module`` names a preprocessor (A1111's ControlNet extension's names, which
clients send): it turns the unit's image into a control map before the engine runs. The ones here
need no downloaded weights and run with opencv and numpy alone, so an API node answers
``/controlnet/detect`` without torch:

    none            the image already is a control map
    invert          255 - image: black lines on white become white lines on black
    canny           cv2.Canny on grey (threshold_a: low, threshold_b: high; A1111 hands it RGB)
    threshold       binary (A1111's "binary"): white where grey <= threshold_a; 0 means Otsu
    scribble_xdog   difference of Gaussians, thresholded: white lines on black
    tile_resample   down by threshold_a (area), back up to the same size (cubic)
    blur_gaussian   Gaussian blur with sigma threshold_a

Preprocessors whose annotator needs weights (depth, openpose, soft edges, ...) are listed only
when their weights file lies under ``<models_dir>/annotators/`` or ``<models_dir>/annotator/``
(A1111 keeps them in ``annotator/downloads/<name>/``; any subfolder is searched). Core does not run
them: ``preprocess`` refuses them with a 400 naming ``module``.

Like A1111, a detector works at ``resolution``: the input is scaled so its short side is that many
pixels (cubic up, area down), edge-padded to a multiple of 64 for the detector and unpadded after,
so the map keeps the input's aspect; the engine then fits it with ``fit_control_image``.
Transparency is composited onto white, as A1111 flattens its input images.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image

from sdgate.core.errors import InvalidRequest
from sdgate.core.requests import ControlResize

MIN_RESOLUTION, MAX_RESOLUTION = 64, 2048
# The long side of a detector's working image: a short side of MAX_RESOLUTION on a very thin
# input would otherwise make a map of millions of pixels on its long side.
MAX_MAP_SIDE = 4 * MAX_RESOLUTION
ANNOTATOR_DIRS = ("annotators", "annotator")

Array = np.ndarray[Any, np.dtype[np.uint8]]


@dataclass(frozen=True)
class Slider:
    """One parameter of a preprocessor, as A1111's ``module_detail`` lists it."""

    name: str
    value: float
    min: float
    max: float
    step: float = 1.0

    def as_a1111(self) -> dict[str, float | str]:
        return {"name": self.name, "value": self.value, "min": self.min, "max": self.max, "step": self.step}


RESOLUTION_SLIDER = Slider("Preprocessor Resolution", 512, MIN_RESOLUTION, MAX_RESOLUTION, 8)


@dataclass(frozen=True)
class Preprocessor:
    """A preprocessor: its A1111 module name, the other names clients send (``ui_name``, A1111's
    label, among them), its sliders in order (threshold_a's, then threshold_b's; the resolution
    slider is not among them: ``uses_resolution`` says whether it has one)."""

    name: str
    aliases: tuple[str, ...]
    sliders: tuple[Slider, ...]
    description: str
    needs_weights: bool = False
    uses_resolution: bool = True
    ui_name: str | None = None  # A1111's label (``module_list?alias_names=true``); None: ``name``
    weights: tuple[str, ...] = ()  # annotator file names, any of which makes it available

    @property
    def label(self) -> str:
        return self.ui_name or self.name

    def a1111_sliders(self) -> list[dict[str, float | str]]:
        """``module_detail[name]["sliders"]``: the resolution slider first where it has one."""
        sliders = ((RESOLUTION_SLIDER,) if self.uses_resolution else ()) + self.sliders
        return [slider.as_a1111() for slider in sliders]


_BUILTIN: tuple[Preprocessor, ...] = (
    Preprocessor(
        "none", (), (), "no preprocessing: the image already is a control map", uses_resolution=False
    ),
    Preprocessor(
        "invert",
        ("invert (from white bg & black line)",),
        (),
        "255 - image: black lines on white become white lines on black",
        uses_resolution=False,
        ui_name="invert (from white bg & black line)",
    ),
    Preprocessor(
        "canny",
        (),
        (Slider("Canny Low Threshold", 100, 1, 255), Slider("Canny High Threshold", 200, 1, 255)),
        "Canny edges of the grey image: white edges on black",
    ),
    Preprocessor(
        "threshold",
        ("binary",),
        (Slider("Binary threshold", 0, 0, 255),),
        "binary map: white where grey <= the threshold, black above it; 0 (or 255) picks it by Otsu",
    ),
    Preprocessor(
        "scribble_xdog",
        (),
        (Slider("XDoG Threshold", 32, 1, 64),),
        "difference of Gaussians, thresholded: white scribble lines on black",
    ),
    Preprocessor(
        "tile_resample",
        (),
        (Slider("Down Sampling Rate", 1.0, 1.0, 8.0, 0.01),),
        "down-sampled by the rate (area), back up to the same size (cubic): detail removed",
        uses_resolution=False,
    ),
    Preprocessor(
        "blur_gaussian",
        (),
        (Slider("Sigma", 9.0, 0.01, 64.0, 0.01),),
        "Gaussian blur with the given sigma",
    ),
)


def _weighted(
    name: str, aliases: tuple[str, ...], weights: tuple[str, ...], description: str
) -> Preprocessor:
    return Preprocessor(name, aliases, (), description, needs_weights=True, weights=weights)


# A1111's annotators and the weight files they load (lllyasviel/Annotators names).
_NEEDS_WEIGHTS: tuple[Preprocessor, ...] = (
    _weighted("softedge_hed", ("hed",), ("ControlNetHED.pth",), "HED soft edges"),
    _weighted("softedge_hedsafe", ("hed_safe",), ("ControlNetHED.pth",), "HED soft edges, safe"),
    _weighted("scribble_hed", ("fake_scribble",), ("ControlNetHED.pth",), "HED scribble"),
    _weighted("softedge_pidinet", ("pidinet",), ("table5_pidinet.pth",), "PiDiNet soft edges"),
    _weighted("softedge_pidisafe", ("pidinet_safe",), ("table5_pidinet.pth",), "PiDiNet soft edges, safe"),
    _weighted("scribble_pidinet", ("pidinet_scribble",), ("table5_pidinet.pth",), "PiDiNet scribble"),
    _weighted("depth_midas", ("depth",), ("dpt_hybrid-midas-501f0c75.pt",), "MiDaS depth"),
    _weighted("normal_midas", ("normal_map",), ("dpt_hybrid-midas-501f0c75.pt",), "MiDaS normals"),
    _weighted("depth_leres", (), ("res101.pth",), "LeReS depth"),
    _weighted("depth_leres++", (), ("res101.pth",), "LeReS++ depth"),
    _weighted("depth_zoe", (), ("ZoeD_M12_N.pt",), "ZoeDepth"),
    _weighted("normal_bae", (), ("scannet.pt",), "BAE normals"),
    _weighted("openpose", (), ("body_pose_model.pth",), "OpenPose body"),
    _weighted("openpose_hand", (), ("body_pose_model.pth",), "OpenPose body and hands"),
    _weighted("openpose_face", (), ("body_pose_model.pth",), "OpenPose body and face"),
    _weighted("openpose_faceonly", (), ("facenet.pth",), "OpenPose face only"),
    _weighted("openpose_full", (), ("body_pose_model.pth",), "OpenPose body, hands and face"),
    _weighted("lineart_realistic", ("lineart",), ("sk_model.pth",), "line art"),
    _weighted("lineart_coarse", (), ("sk_model2.pth",), "coarse line art"),
    _weighted("lineart_anime", (), ("netG.pth",), "anime line art"),
    _weighted("mlsd", (), ("mlsd_large_512_fp32.pth",), "M-LSD straight lines"),
    _weighted("seg_ufade20k", ("segmentation",), ("upernet_global_small.pth",), "UniFormer segmentation"),
)


def _annotator_files(models_dir: Path) -> set[str]:
    """Lower-cased names of the files under the annotator folders (any depth)."""
    names: set[str] = set()
    for folder in ANNOTATOR_DIRS:
        root = models_dir / folder
        if root.is_dir():
            for _dirpath, _dirnames, filenames in os.walk(root, followlinks=False):
                names.update(f.lower() for f in filenames)
    return names


def available(models_dir: Path | None = None) -> list[Preprocessor]:
    """What this server lists: the preprocessors it runs, the weight-free ones. Those that need
    annotator weights (``_NEEDS_WEIGHTS``) are known by name, so a request naming one is told what
    it needs, but listed only once a runner for them exists: none does yet, whatever weights are
    present under ``models_dir`` (``annotator_weights_present`` says which are)."""
    return list(_BUILTIN)


def annotator_weights_present(models_dir: Path) -> list[Preprocessor]:
    """The weight-needing preprocessors whose annotator weights are under ``models_dir``."""
    files = _annotator_files(models_dir)
    return [p for p in _NEEDS_WEIGHTS if any(w.lower() in files for w in p.weights)]


def _key(name: str) -> str:
    return " ".join(name.split()).lower()


def _find(name: str, candidates: tuple[Preprocessor, ...] | list[Preprocessor]) -> Preprocessor | None:
    key = _key(name)
    for preprocessor in candidates:
        if key == preprocessor.name.lower() or key in (_key(alias) for alias in preprocessor.aliases):
            return preprocessor
    return None


def resolve_module(name: str, models_dir: Path | None = None) -> Preprocessor:
    """The preprocessor a client's ``module`` names (its name or an alias, in any case); an unknown
    name, or one whose weights are absent, is an ``InvalidRequest`` naming ``module`` and listing
    what is available."""
    choices = available(models_dir)
    found = _find(name, choices) if isinstance(name, str) else None
    if found is not None:
        return found
    names = ", ".join(p.name for p in choices)
    missing = _find(name, _NEEDS_WEIGHTS) if isinstance(name, str) else None
    if missing is not None:
        where = " or ".join(f"<models>/{folder}/" for folder in ANNOTATOR_DIRS)
        raise InvalidRequest(
            f"module {name!r} needs an annotator model ({', '.join(missing.weights)} under {where}), "
            f"which sdgate does not run yet; available: {names}",
            field="module",
        )
    raise InvalidRequest(f"unknown module {str(name)[:100]!r}; available: {names}", field="module")


# --- running a preprocessor ------------------------------------------------------------------------


def preprocess(
    module: str,
    image: Image.Image,
    *,
    resolution: int = 512,
    threshold_a: float | None = None,
    threshold_b: float | None = None,
) -> Image.Image:
    """The control map (RGB) that ``module`` makes of ``image``.

    ``resolution`` (64..2048) is the short side the detector works at (modules with no resolution
    slider ignore it). A threshold of None, or a negative one (A1111's API sends -1 for "the
    default"), takes the slider's default; others are clamped to the slider's range; a non-finite
    one is an ``InvalidRequest`` naming it. Thresholds a module has no slider for are ignored.
    """
    annotator = _find(module, _NEEDS_WEIGHTS) if isinstance(module, str) else None
    if annotator is not None:
        names = ", ".join(p.name for p in _BUILTIN)
        raise InvalidRequest(
            f"module {annotator.name!r} needs an annotator model, which sdgate does not run yet; "
            f"available: {names}",
            field="module",
        )
    preprocessor = resolve_module(module)
    values = _slider_values(preprocessor, (threshold_a, threshold_b))
    rgb = _as_rgb_array(image)
    if preprocessor.uses_resolution:
        res = _check_resolution(resolution)
        rgb = _resize_short_side(rgb, res)
    padded, unpad = _pad64(rgb) if preprocessor.uses_resolution else (rgb, _identity)
    out = unpad(_RUNNERS[preprocessor.name](padded, *values))
    return Image.fromarray(_hwc3(out), "RGB")


def _identity(array: Array) -> Array:
    return array


def _check_resolution(resolution: object) -> int:
    if isinstance(resolution, bool) or not isinstance(resolution, int | float):
        raise InvalidRequest("processor_res must be a number", field="processor_res")
    if not math.isfinite(resolution) or not MIN_RESOLUTION <= resolution <= MAX_RESOLUTION:
        raise InvalidRequest(
            f"processor_res must be between {MIN_RESOLUTION} and {MAX_RESOLUTION}", field="processor_res"
        )
    return int(resolution)


def _slider_values(preprocessor: Preprocessor, given: tuple[float | None, float | None]) -> list[float]:
    values = []
    for slider, value, field in zip(
        preprocessor.sliders, given, ("threshold_a", "threshold_b"), strict=False
    ):
        if value is None:
            values.append(float(slider.value))
            continue
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise InvalidRequest(f"{field} must be a finite number", field=field)
        if value < 0:
            values.append(float(slider.value))
        else:
            values.append(min(max(float(value), slider.min), slider.max))
    return values


def _as_rgb_array(image: Image.Image) -> Array:
    """RGB uint8, transparency composited onto white."""
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return np.asarray(image.convert("RGB"), dtype=np.uint8)


def _hwc3(array: Array) -> Array:
    if array.ndim == 2:
        array = array[:, :, None]
    if array.shape[2] == 1:
        array = np.repeat(array, 3, axis=2)
    return np.ascontiguousarray(array[:, :, :3], dtype=np.uint8)


def working_size(width: int, height: int, resolution: int) -> tuple[int, int]:
    """(width, height) of a detector's map: the short side ``resolution``, the aspect kept, the long
    side bounded by ``MAX_MAP_SIDE``."""
    k = resolution / max(1, min(width, height))
    k = min(k, MAX_MAP_SIDE / max(1, width, height))
    return max(1, round(width * k)), max(1, round(height * k))


def _resize_short_side(rgb: Array, resolution: int) -> Array:
    height, width = rgb.shape[:2]
    new_w, new_h = working_size(width, height, resolution)
    if (new_w, new_h) == (width, height):
        return rgb
    return _resize(rgb, new_w, new_h)


def _resize(rgb: Array, width: int, height: int) -> Array:
    """Area when shrinking, cubic when enlarging (A1111's choice for detector inputs)."""
    grow = width * height > rgb.shape[0] * rgb.shape[1]
    return cv2.resize(rgb, (width, height), interpolation=cv2.INTER_CUBIC if grow else cv2.INTER_AREA)


def _pad64(rgb: Array) -> tuple[Array, Callable[[Array], Array]]:
    height, width = rgb.shape[:2]
    pad_h, pad_w = -height % 64, -width % 64
    padded = np.pad(rgb, ((0, pad_h), (0, pad_w), (0, 0)), mode="edge")
    return padded, lambda out: np.ascontiguousarray(out[:height, :width])


def _grey(rgb: Array) -> Array:
    return cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)


def _none(rgb: Array) -> Array:
    return rgb


def _invert(rgb: Array) -> Array:
    return 255 - rgb


def _canny(rgb: Array, low: float, high: float) -> Array:
    return cv2.Canny(_grey(rgb), int(low), int(high))


def _threshold(rgb: Array, level: float) -> Array:
    grey = _grey(rgb)
    if level in (0, 255):
        _, out = cv2.threshold(grey, 0, 255, cv2.THRESH_BINARY_INV + cv2.THRESH_OTSU)
    else:
        _, out = cv2.threshold(grey, level, 255, cv2.THRESH_BINARY_INV)
    return out


def _scribble_xdog(rgb: Array, level: float) -> Array:
    pixels = rgb.astype(np.float32)
    fine = cv2.GaussianBlur(pixels, (0, 0), 0.5)
    coarse = cv2.GaussianBlur(pixels, (0, 0), 5.0)
    # A line is where the fine image is darker than its surroundings (coarse - fine > 0) in every
    # channel, as A1111's xdog takes the least difference of the three.
    darkness = np.clip(np.min(coarse - fine, axis=2), 0, 255)
    return np.where(2 * darkness > level, 255, 0).astype(np.uint8)


def _tile_resample(rgb: Array, rate: float) -> Array:
    if rate < 1.1:
        return rgb
    height, width = rgb.shape[:2]
    small_w, small_h = max(1, int(width / rate)), max(1, int(height / rate))
    small = cv2.resize(rgb, (small_w, small_h), interpolation=cv2.INTER_AREA)
    return cv2.resize(small, (width, height), interpolation=cv2.INTER_CUBIC)


def _blur_gaussian(rgb: Array, sigma: float) -> Array:
    return cv2.GaussianBlur(rgb, (0, 0), sigma)


_RUNNERS: dict[str, Callable[..., Array]] = {
    "none": _none,
    "invert": _invert,
    "canny": _canny,
    "threshold": _threshold,
    "scribble_xdog": _scribble_xdog,
    "tile_resample": _tile_resample,
    "blur_gaussian": _blur_gaussian,
}


# --- fitting a control map to the generation ------------------------------------------------------


def fit_control_image(image: Image.Image, width: int, height: int, mode: ControlResize) -> Image.Image:
    """The control map at exactly (width, height), as A1111's resize modes make it:

    - ``just_resize``: stretched to the size;
    - ``crop_and_resize``: scaled to cover the size, the overflow cropped equally from both ends;
    - ``resize_and_fill``: scaled to fit inside the size, centred, the rest filled with the median
      colour of the map's border pixels (black for an edge map), as A1111 fills it.
    """
    if not (0 < width <= MAX_MAP_SIDE and 0 < height <= MAX_MAP_SIDE):
        raise InvalidRequest(f"a control image's size must be 1..{MAX_MAP_SIDE} pixels a side", field="width")
    rgb = _as_rgb_array(image)
    src_h, src_w = rgb.shape[:2]
    mode = ControlResize(mode)
    if mode is ControlResize.JUST_RESIZE:
        out = _resize(rgb, width, height)
    elif mode is ControlResize.CROP_AND_RESIZE:
        k = max(width / src_w, height / src_h)
        new_w, new_h = max(width, round(src_w * k)), max(height, round(src_h * k))
        scaled = _resize(rgb, new_w, new_h)
        top, left = (new_h - height) // 2, (new_w - width) // 2
        out = scaled[top : top + height, left : left + width]
    else:
        k = min(width / src_w, height / src_h)
        new_w, new_h = min(width, max(1, round(src_w * k))), min(height, max(1, round(src_h * k)))
        out = np.empty((height, width, 3), dtype=np.uint8)
        out[:, :] = _border_median(rgb)
        top, left = (height - new_h) // 2, (width - new_w) // 2
        out[top : top + new_h, left : left + new_w] = _resize(rgb, new_w, new_h)
    if out.shape[:2] != (height, width):  # pragma: no cover - the arithmetic above guarantees it
        raise AssertionError(f"fitted control map is {out.shape[:2]}, not {(height, width)}")
    return Image.fromarray(np.ascontiguousarray(out), "RGB")


def _border_median(rgb: Array) -> Array:
    border = np.concatenate([rgb[0, :], rgb[-1, :], rgb[:, 0], rgb[:, -1]], axis=0)
    return np.median(border, axis=0).astype(np.uint8)


def pixel_perfect_resolution(
    image_size: tuple[int, int], target: tuple[int, int], mode: ControlResize
) -> int:
    """A1111's "pixel perfect": the preprocessor resolution at which the map's short side lands on
    the generation at 1:1 once fitted. ``image_size`` and ``target`` are (width, height); the result
    is bounded to 64..2048."""
    raw_w, raw_h = (max(1, int(v)) for v in image_size)
    target_w, target_h = (max(1, int(v)) for v in target)
    k_h, k_w = target_h / raw_h, target_w / raw_w
    k = min(k_h, k_w) if ControlResize(mode) is ControlResize.RESIZE_AND_FILL else max(k_h, k_w)
    estimate = int(np.round(k * min(raw_w, raw_h)))
    return min(max(estimate, MIN_RESOLUTION), MAX_RESOLUTION)
