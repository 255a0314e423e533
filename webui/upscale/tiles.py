"""Run an image model over overlapping tiles, so that a large image fits in memory.

The input is cut into tiles of ``tile`` pixels that overlap by ``overlap`` pixels; each tile is
upscaled alone and the results are blended: across an overlap a tile's weight is 0 on the quarter
nearest its own edge (where the model saw too little context), ramps linearly over the middle half
and is 1 beyond (image borders keep full weight), so seams do not show. Where a quarter of the
overlap is wider than the model's receptive field, the result equals the untiled one up to float
rounding. ``between`` is called
before each tile (it raises to stop the job: an interrupt lands between tiles).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def _starts(size: int, tile: int, overlap: int) -> list[int]:
    if size <= tile:
        return [0]
    stride = max(1, tile - overlap)
    starts = list(range(0, size - tile, stride))
    return starts + [size - tile]


def tile_count(height: int, width: int, tile: int, overlap: int) -> int:
    if tile <= 0:
        return 1
    return len(_starts(height, tile, overlap)) * len(_starts(width, tile, overlap))


def _ramp(length: int, fade: int, head: bool, tail: bool, torch: Any) -> Any:
    weight = torch.ones(length)
    if fade <= 0:
        return weight
    margin, middle = fade // 4, max(1, fade - 2 * (fade // 4))
    ramp = ((torch.arange(fade, dtype=torch.float32) - margin + 0.5) / middle).clamp(0, 1)
    if head:
        weight[:fade] = torch.minimum(weight[:fade], ramp)
    if tail:
        weight[-fade:] = torch.minimum(weight[-fade:], ramp.flip(0))
    return weight


def run_tiled(
    model: Callable[[Any], Any],
    image: Any,
    tile: int,
    overlap: int,
    between: Callable[[int, int], None] | None = None,
) -> Any:
    """``model(image)`` for a (1, C, H, W) tensor, computed tile by tile (``tile`` <= 0: in one piece)."""
    import torch

    _, _, height, width = image.shape
    if tile <= 0 or (height <= tile and width <= tile):
        if between is not None:
            between(0, 1)
        return model(image)
    overlap = max(0, min(overlap, tile // 2))
    ys, xs = _starts(height, tile, overlap), _starts(width, tile, overlap)
    total = len(ys) * len(xs)
    out = weights = None
    scale = 1
    for index, (y, x) in enumerate((y, x) for y in ys for x in xs):
        if between is not None:
            between(index, total)
        piece = model(image[:, :, y : y + tile, x : x + tile]).float()
        if out is None:
            scale = piece.shape[-1] // min(tile, width)
            out = torch.zeros(piece.shape[0], piece.shape[1], height * scale, width * scale)
            weights = torch.zeros(1, 1, height * scale, width * scale)
        th, tw = piece.shape[-2:]
        fade = overlap * scale
        wy = _ramp(th, fade, y > 0, y + tile < height, torch)
        wx = _ramp(tw, fade, x > 0, x + tile < width, torch)
        mask = (wy[:, None] * wx[None, :])[None, None]
        oy, ox = y * scale, x * scale
        out[:, :, oy : oy + th, ox : ox + tw] += piece.cpu() * mask
        weights[:, :, oy : oy + th, ox : ox + tw] += mask
    return out / weights.clamp_min(1e-8)
