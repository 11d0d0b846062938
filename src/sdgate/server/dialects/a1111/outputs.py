"""A1111's ``save_images`` and grids: files under ``<data-dir>/outputs``, named as A1111 names them.

With v1.10.1's default options a txt2img sample lands in
``outputs/txt2img-images/<YYYY-MM-DD>/00000-<seed>.png`` (``save_to_dirs`` with the ``[date]``
folder pattern, the ``[seed]`` file pattern, a five-digit counter per folder) and a grid in
``outputs/txt2img-grids/<YYYY-MM-DD>/grid-0000.png``; img2img (and inpaint) use ``img2img-*``.
Files are created exclusively, so two jobs finishing at once never overwrite each other.

Only the default naming patterns are implemented: ``samples_filename_pattern`` and
``directories_filename_pattern`` are not read. The PNGs saved are the ones the job stored, with
their infotext, as A1111 writes them while ``enable_pnginfo`` is on.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from PIL import Image, ImageColor

from sdgate.core.grid import image_grid
from sdgate.core.images import encode_png
from sdgate.core.requests import Mode

log = logging.getLogger("sdgate.a1111")

OUTPUT_DIRS: dict[str, tuple[str, str]] = {  # (samples, grids) under <data-dir>/outputs
    "txt2img": ("txt2img-images", "txt2img-grids"),
    "img2img": ("img2img-images", "img2img-grids"),
}
MAX_TRIES = 500  # A1111 gives up after as many taken numbers


@dataclass(frozen=True)
class Outputs:
    """What a finished A1111 job returns beyond its images: the grid, when A1111 returns one."""

    grid_png: bytes | None = None
    grid_infotext: str | None = None
    saved: tuple[Path, ...] = ()


def next_number(folder: Path, basename: str) -> int:
    """A1111's ``get_next_sequence_number``: one past the highest leading number in the folder."""
    prefix = f"{basename}-" if basename else ""
    highest = -1
    if folder.is_dir():
        for entry in folder.iterdir():
            if entry.name.startswith(prefix):
                first = Path(entry.name[len(prefix) :]).stem.split("-")[0]
                if first.isdigit():
                    highest = max(highest, int(first))
    return highest + 1


def write_numbered(folder: Path, data: bytes, *, basename: str = "", decoration: str = "") -> Path:
    """``00012-<decoration>.png`` (or ``<basename>-0012.png``) at the next free number."""
    folder.mkdir(parents=True, exist_ok=True)
    start = next_number(folder, basename)
    suffix = f"-{decoration}" if decoration else ""
    for number in range(start, start + MAX_TRIES):
        stem = f"{number:05}" if not basename else f"{basename}-{number:04}"
        path = folder / f"{stem}{suffix}.png"
        try:
            with path.open("xb") as fh:
                fh.write(data)
        except FileExistsError:  # another job took this number a moment ago
            continue
        return path
    raise OSError(f"no free file name in {folder} after {MAX_TRIES} tries")


def _flag(options: Mapping[str, Any], key: str, default: bool) -> bool:
    value = options.get(key, default)
    return default if value is None else bool(value)


def _int(options: Mapping[str, Any], key: str, default: int) -> int:
    try:
        return int(float(options.get(key, default)))
    except (TypeError, ValueError):
        return default


def _colour(value: Any) -> str:
    """``grid_background_color``, or white when it is not a colour PIL knows."""
    try:
        ImageColor.getcolor(str(value), "RGB")
    except ValueError:
        return "#ffffff"
    return str(value)


def finish(
    root: Path,
    mode: Mode,
    images: Sequence[bytes],
    infotexts: Sequence[str],
    seeds: Sequence[int],
    *,
    save_images: bool,
    batch_size: int,
    options: Mapping[str, Any],
    now: datetime | None = None,
) -> Outputs:
    """Save what A1111 saves for a job and build the grid it returns (``processing.process_images``).

    A1111 sets ``do_not_save_samples`` and ``do_not_save_grid`` to ``not save_images``, whatever the
    request said: without ``save_images`` nothing is saved and no grid is made.
    """
    if not save_images or not images:
        return Outputs()
    kind = "txt2img" if mode == Mode.TXT2IMG else "img2img"
    samples_dir, grids_dir = (root / "outputs" / name for name in OUTPUT_DIRS[kind])
    day = (now or datetime.now()).strftime("%Y-%m-%d")  # A1111's [date]: local time
    saved: list[Path] = []
    if _flag(options, "samples_save", True):
        folder = samples_dir / day if _flag(options, "save_to_dirs", True) else samples_dir
        for data, seed in zip(images, seeds, strict=True):
            saved.append(write_numbered(folder, data, decoration=str(seed)))
    want_return, want_save = _flag(options, "return_grid", True), _flag(options, "grid_save", True)
    too_few = len(images) < 2 and _flag(options, "grid_only_if_multiple", True)
    if too_few or not (want_return or want_save):
        return Outputs(saved=tuple(saved))
    pictures = [Image.open(io.BytesIO(data)) for data in images]
    grid = image_grid(
        pictures,
        n_rows=_int(options, "n_rows", -1),
        batch_size=batch_size,
        prevent_empty_spots=_flag(options, "grid_prevent_empty_spots", False),
        background=_colour(options.get("grid_background_color")),
    )
    text = infotexts[0] if infotexts else None  # A1111: the first image's, with the main prompt
    png = encode_png(grid, text if _flag(options, "enable_pnginfo", True) else None)
    if want_save:
        folder = grids_dir / day if _flag(options, "grid_save_to_dirs", True) else grids_dir
        saved.append(write_numbered(folder, png, basename="grid"))
    log.info("saved %d file(s) under %s", len(saved), root / "outputs")
    if not want_return:
        return Outputs(saved=tuple(saved))
    return Outputs(grid_png=png, grid_infotext=text, saved=tuple(saved))
