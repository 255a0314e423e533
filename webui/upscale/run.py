"""Upscale one image: by a scale factor or to a size (with A1111's centre crop), with any upscaler.

``Upscalers`` is built once by the app over the models folder; it keeps the model used last
loaded (a second name loads that one instead) and is called on the generation worker only, which
owns the device. A model with a native scale of 4 asked for x2 runs once and is resized down with
Lanczos; asked for x8 it runs twice (at most ``MAX_PASSES`` times), as A1111 does.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from webui.upscale import catalog
from webui.upscale.loading import UpscalerError, load_model
from webui.upscale.tiles import run_tiled, tile_count

MAX_PASSES = 3
DEFAULT_TILE = 192
DEFAULT_OVERLAP = 16
Between = Callable[[int, int], None]


@dataclass(frozen=True)
class TileOptions:
    tile: int = DEFAULT_TILE  # input pixels per tile side (0: the whole image in one piece)
    overlap: int = DEFAULT_OVERLAP


def target_size(width: int, height: int, scale: float) -> tuple[int, int]:
    return max(1, int(width * scale)), max(1, int(height * scale))


def scale_to_fit(width: int, height: int, to_width: int, to_height: int) -> float:
    """A1111's "resize to": the factor that makes the image cover ``to_width`` x ``to_height``."""
    return max(to_width / width, to_height / height)


def centre_crop(image: Any, width: int, height: int) -> Any:
    left, top = (image.width - width) // 2, (image.height - height) // 2
    return image.crop((left, top, left + width, top + height))


def blend(first: Any, second: Any, visibility: float) -> Any:
    """``second`` laid over ``first`` at ``visibility`` (0: first only, 1: second only)."""
    from PIL import Image

    if second.size != first.size:
        second = second.resize(first.size, Image.Resampling.LANCZOS)
    return Image.blend(first.convert("RGB"), second.convert("RGB"), max(0.0, min(1.0, visibility)))


class Upscalers:
    """The upscalers of a models folder, and the one model loaded for them (see the module docstring)."""

    def __init__(
        self, models_dir: Path, device: Callable[[], str] = lambda: "cpu", tiles: TileOptions | None = None
    ) -> None:
        self.models_dir = Path(models_dir)
        self._device = device
        self.tiles = tiles or TileOptions()  # the settings' tile size (upscaler_tile, upscaler_tile_overlap)
        self._lock = threading.Lock()
        self._entries: list[catalog.UpscalerEntry] | None = None
        self._loaded: tuple[tuple[Path, int], Any] | None = None

    def ensure_folder(self) -> None:
        folders = [self.models_dir / name for name in catalog.FOLDERS]
        if not any(f.is_dir() for f in folders):
            (self.models_dir / catalog.CREATED_FOLDER).mkdir(parents=True, exist_ok=True)

    def entries(self, refresh: bool = False) -> list[catalog.UpscalerEntry]:
        with self._lock:
            if self._entries is None or refresh:
                self._entries = catalog.scan(self.models_dir)
            return list(self._entries)

    def names(self) -> list[str]:
        return [e.name for e in self.entries()]

    def find(self, name: str) -> catalog.UpscalerEntry:
        try:
            return catalog.find(self.entries(), name)
        except KeyError:
            return catalog.find(self.entries(refresh=True), name)  # a file added since the last scan

    def model(self, entry: catalog.UpscalerEntry) -> Any:
        assert entry.path is not None
        key = (entry.path, entry.path.stat().st_mtime_ns)
        with self._lock:
            if self._loaded is not None and self._loaded[0] == key:
                return self._loaded[1]
            self._loaded = None  # free the previous model before the next one loads
        descriptor = load_model(entry.path, self._device())
        with self._lock:
            self._loaded = (key, descriptor)
        return descriptor

    def passes(self, entry: catalog.UpscalerEntry, width: int, height: int, scale: float) -> int:
        """How many model runs ``scale`` takes (for progress), 0 for resampling."""
        if not entry.is_model or scale <= 1:
            return 0
        native, runs, reached = max(entry.scale, 1.0), 0, 1.0
        while reached < scale and runs < MAX_PASSES:
            reached, runs = reached * native, runs + 1
        return runs

    def upscale(
        self,
        image: Any,
        scale: float,
        name: str,
        tiles: TileOptions | None = None,
        between: Between | None = None,
        size: tuple[int, int] | None = None,
    ) -> Any:
        """``image`` scaled by ``scale`` with upscaler ``name``: ``size``, else ``int(w * scale)`` x ``int(h * scale)``."""
        from PIL import Image

        entry = self.find(name)
        tiles = tiles or self.tiles
        size = size or target_size(image.width, image.height, scale)
        if not entry.is_model:
            if catalog.RESAMPLERS[entry.name] is None:
                return image
            return image.resize(size, getattr(Image.Resampling, catalog.RESAMPLERS[entry.name]))
        out = image.convert("RGB")
        for _ in range(MAX_PASSES):
            if out.width >= size[0] and out.height >= size[1]:
                break
            out = self.run_model(entry, out, tiles, between)
        return out if out.size == size else out.resize(size, Image.Resampling.LANCZOS)

    def run_model(self, entry: catalog.UpscalerEntry, image: Any, tiles: TileOptions, between: Between | None) -> Any:
        """One run of the model at its native scale, tile by tile."""
        import numpy as np
        import torch
        from PIL import Image

        model = self.model(entry)
        pixels = torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0)
        batch = pixels.permute(2, 0, 1)[None].to(model.device)
        with torch.inference_mode():
            out = run_tiled(model, batch, tiles.tile, tiles.overlap, between)
        array = (out[0].clamp(0, 1).permute(1, 2, 0).float().cpu().numpy() * 255.0).round().astype(np.uint8)
        return Image.fromarray(array, "RGB")

    def tiles_for(self, name: str, width: int, height: int, scale: float, tiles: TileOptions) -> int:
        """How many tiles upscaling a ``width`` x ``height`` image takes (progress totals)."""
        entry = self.find(name)
        total, w, h = 0, width, height
        for _ in range(self.passes(entry, width, height, scale)):
            total += tile_count(h, w, tiles.tile, tiles.overlap)
            w, h = int(w * entry.scale), int(h * entry.scale)
        return total


def checked_name(upscalers: Upscalers, name: str, field_name: str) -> str:
    """``name`` when it is an installed upscaler, else ``UpscalerError`` naming the valid ones (the field in it)."""
    try:
        return upscalers.find(name).name
    except KeyError as exc:
        raise UpscalerError(f"{field_name}: {exc.args[0]}") from None
