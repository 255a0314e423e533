"""The labelled grid image: cells in rows and columns, X labels above, Y labels on the left, Z grids side by side.

Labels use DejaVu Sans when PIL finds it, else PIL's own default font (always there). Pure PIL.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from PIL import Image, ImageDraw, ImageFont

BACKGROUND = (255, 255, 255)
TEXT = (0, 0, 0)


def font(size: int) -> Any:
    for name in ("DejaVuSans.ttf", "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"):
        try:
            return ImageFont.truetype(name, size)
        except OSError:
            continue
    try:
        return ImageFont.load_default(size)  # PIL >= 10.1 scales its bundled font
    except TypeError:
        return ImageFont.load_default()


def _wrap(draw: ImageDraw.ImageDraw, text: str, face: Any, width: int) -> list[str]:
    lines: list[str] = []
    for word in text.split(" "):
        if lines and draw.textlength(f"{lines[-1]} {word}", font=face) <= width:
            lines[-1] = f"{lines[-1]} {word}"
        else:
            lines.append(word)
    return lines or [""]


def _text_block(text: str, width: int, face: Any, line_h: int) -> Image.Image:
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    lines = _wrap(probe, text, face, width - 8)
    block = Image.new("RGB", (width, line_h * len(lines) + 8), BACKGROUND)
    draw = ImageDraw.Draw(block)
    for i, line in enumerate(lines):
        w = draw.textlength(line, font=face)
        draw.text(((width - w) / 2, 4 + i * line_h), line, fill=TEXT, font=face)
    return block


def image_grid(images: Sequence[Image.Image], cols: int, rows: int, margin: int = 0) -> Image.Image:
    """Images (row-major) in a ``cols`` x ``rows`` grid of the largest cell size; gaps of ``margin``."""
    w = max(im.width for im in images)
    h = max(im.height for im in images)
    grid = Image.new("RGB", (cols * w + (cols - 1) * margin, rows * h + (rows - 1) * margin), BACKGROUND)
    for i, im in enumerate(images):
        r, c = divmod(i, cols)
        grid.paste(im.convert("RGB"), (c * (w + margin), r * (h + margin)))
    return grid


def annotate(grid: Image.Image, cell_w: int, cell_h: int, cols: Sequence[str], rows: Sequence[str], margin: int = 0):
    """``grid`` with ``cols`` labels above its columns and ``rows`` labels left of its rows (empty: none)."""
    has_cols, has_rows = any(cols), any(rows)
    if not has_cols and not has_rows:
        return grid
    size = max(12, min(cell_w, cell_h) // 12)
    face, line_h = font(size), int(size * 1.25)
    tops = [_text_block(t, cell_w, face, line_h) for t in cols] if has_cols else []
    left_w = max(cell_w * 3 // 4, 64) if has_rows else 0
    lefts = [_text_block(t, left_w, face, line_h) for t in rows] if has_rows else []
    top_h = max((b.height for b in tops), default=0)
    out = Image.new("RGB", (grid.width + left_w, grid.height + top_h), BACKGROUND)
    out.paste(grid, (left_w, top_h))
    for i, block in enumerate(tops):
        out.paste(block, (left_w + i * (cell_w + margin), (top_h - block.height) // 2))
    for i, block in enumerate(lefts):
        y = top_h + i * (cell_h + margin) + (cell_h - block.height) // 2
        out.paste(block, (0, max(top_h, y)))
    return out


def blank_like(images: Sequence[Any], size: tuple[int, int]) -> Image.Image:
    """An empty cell (a cell that was skipped or interrupted) the size of the others."""
    found = next((im for im in images if im is not None), None)
    return Image.new("RGB", found.size if found is not None else size, BACKGROUND)


def draw_grids(
    cells: Sequence[Image.Image],
    shape: tuple[int, int, int],
    labels: tuple[Sequence[str], Sequence[str], Sequence[str]],
    legend: bool = True,
    margin: int = 0,
) -> tuple[Image.Image, list[Image.Image]]:
    """(the whole grid, one X/Y sub-grid per Z value) from the cells in layout order (x fastest)."""
    nx, ny, nz = shape
    xl, yl, zl = labels if legend else ([""] * nx, [""] * ny, [""] * nz)
    cell_w = max(im.width for im in cells)
    cell_h = max(im.height for im in cells)
    subs = []
    for iz in range(nz):
        chunk = cells[iz * nx * ny : (iz + 1) * nx * ny]
        subs.append(annotate(image_grid(chunk, nx, ny, margin), cell_w, cell_h, xl, yl, margin))
    if nz == 1:
        return subs[0], subs
    whole = image_grid(subs, nz, 1, margin)
    sub_w = max(s.width for s in subs)
    sub_h = max(s.height for s in subs)
    return annotate(whole, sub_w, sub_h, zl, [], margin), subs
