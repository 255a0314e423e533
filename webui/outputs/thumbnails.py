"""Thumbnails of output images, made once with PIL and kept in ``cache/thumbnails/``.

A thumbnail's name is the sha256 of the image's resolved path, size, mtime and the thumbnail size,
so an image that changes (another size or mtime) gets a new one and the old one is never shown
again. Each is written to a hidden temp file in its folder and renamed into place (a reader never
sees half a file). The folder is capped: once the files written since the last check add up to an
eighth of ``max_bytes``, the least recently used thumbnails (a hit touches its mtime) go until the
folder holds at most ``PRUNE_TO`` of the cap. Images are opened only as PNG, JPEG or WebP within the
pixel limit (``webui.security.images``).
"""

from __future__ import annotations

import hashlib
import os
import secrets
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

THUMBNAIL_SIDE = 256
THUMBNAIL_QUALITY = 80
DEFAULT_MAX_BYTES = 256 * 1024 * 1024
PRUNE_TO = 0.8
SUFFIX = ".webp"


@dataclass(frozen=True)
class Thumbnail:
    path: Path
    hit: bool  # True when it was in the cache already


class ThumbnailCache:
    """Thumbnails under ``folder`` (created on first use); safe to share between threads."""

    def __init__(self, folder: Path, side: int = THUMBNAIL_SIDE, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.folder = Path(folder)
        self.side = int(side)
        self.max_bytes = int(max_bytes)
        self._written = 0
        self._lock = threading.Lock()

    def key(self, path: Path, st: os.stat_result) -> str:
        text = f"{Path(path).resolve()}\0{st.st_size}\0{st.st_mtime_ns}\0{self.side}"
        return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()

    def _path_for(self, key: str) -> Path:
        return self.folder / key[:2] / f"{key}{SUFFIX}"

    def get(self, path: Path) -> Thumbnail:
        """The thumbnail of the image at ``path`` (made now when missing); ``NotAnImage``/``OSError`` pass."""
        st = os.stat(path)
        target = self._path_for(self.key(path, st))
        if target.is_file():
            try:
                os.utime(target)  # least recently used goes first when the folder is pruned
            except OSError:
                pass
            return Thumbnail(target, True)
        data = self._render(path)
        self._write(target, data)
        return Thumbnail(target, False)

    def image(self, path: Path) -> Any:
        """The thumbnail as a loaded PIL image."""
        from PIL import Image

        with Image.open(self.get(path).path, formats=("WEBP",)) as thumb:
            thumb.load()
            return thumb

    def _render(self, path: Path) -> bytes:
        import io

        from webui.security.images import open_image

        image = open_image(path)
        try:
            mode = "RGBA" if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info else "RGB"
            small = image.convert(mode) if image.mode != mode else image
            small.thumbnail((self.side, self.side))
            buffer = io.BytesIO()
            small.save(buffer, format="WEBP", quality=THUMBNAIL_QUALITY)
            return buffer.getvalue()
        finally:
            image.close()

    def _write(self, target: Path, data: bytes) -> None:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{os.getpid()}-{secrets.token_hex(8)}.tmp")
        try:
            with open(tmp, "wb") as handle:
                handle.write(data)
            os.replace(tmp, target)
        finally:
            if tmp.exists():
                tmp.unlink(missing_ok=True)
        with self._lock:
            self._written += len(data)
            due = self._written * 8 >= self.max_bytes
            if due:
                self._written = 0
        if due:
            self.prune()

    def files(self) -> list[tuple[float, int, Path]]:
        """(mtime, bytes, path) of every thumbnail."""
        found = []
        if not self.folder.is_dir():
            return found
        with os.scandir(self.folder) as shards:
            for shard in shards:
                if not shard.is_dir(follow_symlinks=False):
                    continue
                with os.scandir(shard.path) as entries:
                    for entry in entries:
                        if entry.name.endswith(SUFFIX) and entry.is_file(follow_symlinks=False):
                            st = entry.stat(follow_symlinks=False)
                            found.append((st.st_mtime, st.st_size, Path(entry.path)))
        return found

    def prune(self) -> int:
        """Remove the least recently used thumbnails while the folder holds more than ``max_bytes``; how many."""
        files = sorted(self.files())
        total = sum(size for _, size, _ in files)
        if total <= self.max_bytes:
            return 0
        removed = 0
        for _, size, path in files:
            if total <= self.max_bytes * PRUNE_TO:
                break
            try:
                path.unlink()
            except OSError:
                continue
            total -= size
            removed += 1
        return removed
