"""A1111's grid legends (``modules/images.draw_grid_annotations``): text above each column and left
of each row, inactive entries greyed and struck through (the prompt matrix's unused parts).

Drawn with PIL's own default font (scalable where Pillow has FreeType), not A1111's DejaVu: the
layout follows A1111 (font size ``(cell_w + cell_h) // 25``, left padding ``3/4`` of a cell when
rows are labelled, words wrapped to the cell width); the glyphs differ.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache

from PIL import Image, ImageDraw, ImageFont

ACTIVE = (0, 0, 0)  # A1111's grid_text_active_color
INACTIVE = (153, 153, 153)  # grid_text_inactive_color
BACKGROUND = (255, 255, 255)  # grid_background_color

Font = ImageFont.FreeTypeFont | ImageFont.ImageFont


@dataclass
class GridAnnotation:
    text: str = ""
    is_active: bool = True
    size: tuple[int, int] = field(default=(0, 0), compare=False)


@lru_cache(maxsize=32)
def font(size: int) -> Font:
    try:
        return ImageFont.load_default(size=max(1, size))
    except (TypeError, OSError, ImportError):  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def _wrap(draw: ImageDraw.ImageDraw, text: str, fnt: Font, width: int) -> list[str]:
    lines = [""]
    for word in text.split():
        line = f"{lines[-1]} {word}".strip()
        if draw.textlength(line, font=fnt) <= width or not lines[-1]:
            lines[-1] = line
        else:
            lines.append(word)
    return lines


def _layout(lines: Sequence[GridAnnotation], fnt: Font, width: int) -> list[GridAnnotation]:
    draw = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    out = []
    for line in lines:
        for text in _wrap(draw, line.text, fnt, width):
            left, top, right, bottom = draw.textbbox((0, 0), text, font=fnt) if text else (0, 0, 0, 0)
            out.append(GridAnnotation(text, line.is_active, (right - left, bottom - top)))
    return out


def draw_grid_annotations(
    grid: Image.Image,
    cell_w: int,
    cell_h: int,
    hor_texts: Sequence[Sequence[GridAnnotation]],
    ver_texts: Sequence[Sequence[GridAnnotation]],
    margin: int = 0,
) -> Image.Image:
    """``grid`` (cells of ``cell_w`` x ``cell_h``) with ``margin`` pixels between cells, a row of
    column labels on top and a column of row labels on the left (each only if it has any text)."""
    cols, rows = max(1, grid.width // cell_w), max(1, grid.height // cell_h)
    fontsize = (cell_w + cell_h) // 25
    spacing = fontsize // 2
    fnt = font(fontsize)
    has_rows = any(line.text for lines in ver_texts for line in lines)
    pad_left = cell_w * 3 // 4 if has_rows else 0
    hor = [_layout(lines, fnt, cell_w) for lines in hor_texts]
    ver = [_layout(lines, fnt, pad_left) for lines in ver_texts]
    hor_heights = [sum(line.size[1] + spacing for line in lines) - spacing for lines in hor]
    ver_heights = [sum(line.size[1] + spacing for line in lines) - spacing for lines in ver]
    has_cols = any(line.text for lines in hor for line in lines)
    pad_top = max(hor_heights) + spacing * 2 if has_cols and hor_heights else 0
    result = Image.new(
        "RGB",
        (grid.width + pad_left + margin * (cols - 1), grid.height + pad_top + margin * (rows - 1)),
        BACKGROUND,
    )
    for row in range(rows):
        for col in range(cols):
            cell = grid.crop((cell_w * col, cell_h * row, cell_w * (col + 1), cell_h * (row + 1)))
            result.paste(cell, (pad_left + (cell_w + margin) * col, pad_top + (cell_h + margin) * row))
    draw = ImageDraw.Draw(result)
    for col, lines in enumerate(hor[:cols]):
        x = pad_left + (cell_w + margin) * col + cell_w / 2
        _draw_lines(draw, x, pad_top / 2 - hor_heights[col] / 2, lines, fnt, spacing)
    for row, lines in enumerate(ver[:rows]):
        y = pad_top + (cell_h + margin) * row + cell_h / 2 - ver_heights[row] / 2
        _draw_lines(draw, pad_left / 2, y, lines, fnt, spacing)
    return result


def _draw_lines(
    draw: ImageDraw.ImageDraw, x: float, y: float, lines: Sequence[GridAnnotation], fnt: Font, spacing: int
) -> None:
    for line in lines:
        if line.text:
            colour = ACTIVE if line.is_active else INACTIVE
            draw.text((x, y + line.size[1] / 2), line.text, font=fnt, fill=colour, anchor="mm")
            if not line.is_active:
                half_w, mid = line.size[0] // 2, y + line.size[1] // 2
                draw.line((x - half_w, mid, x + half_w, mid), fill=INACTIVE, width=4)
        y += line.size[1] + spacing


def prompt_matrix_annotations(
    parts: Sequence[str],
) -> tuple[list[list[GridAnnotation]], list[list[GridAnnotation]]]:
    """A1111's ``draw_prompt_matrix`` legends: the first half of the optional parts across the
    columns, the rest down the rows; each cell label lists every part, active or struck through."""
    prompts = [p.strip() for p in parts[1:]]
    boundary = math.ceil(len(prompts) / 2)
    horiz, vert = prompts[:boundary], prompts[boundary:]

    def texts(names: list[str]) -> list[list[GridAnnotation]]:
        return [
            [GridAnnotation(name, is_active=bool(pos & (1 << i))) for i, name in enumerate(names)]
            for pos in range(1 << len(names))
        ]

    return texts(horiz), texts(vert)
