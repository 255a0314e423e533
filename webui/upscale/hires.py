"""Hires fix with an upscaler model: the decoded first-pass images upscaled to the second pass's size."""

from __future__ import annotations

from typing import Any


def upscale_decoded(upscalers: Any, images: list[Any], width: int, height: int, name: str, ctx: Any) -> list[Any]:
    """Each image upscaled with ``name`` to exactly ``width`` x ``height``; an interrupt lands between tiles."""

    def between(_index: int, _total: int) -> None:
        ctx.check()

    scaled = []
    for image in images:
        factor = max(width / image.width, height / image.height)
        scaled.append(upscalers.upscale(image, factor, name, between=between, size=(width, height)))
    return scaled
