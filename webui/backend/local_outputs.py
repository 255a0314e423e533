"""The backend's outputs browser: the index of ``outputs/`` and the thumbnail cache, as plain records.

``OutputsBrowser`` is built by ``LocalBackend`` on first use (one per backend, rebuilt when the
outputs folder changes) over ``webui.outputs.browse.OutputIndex`` and
``webui.outputs.thumbnails.ThumbnailCache``. Every id that comes in is checked by the index
(``resolve``): only an image it lists now, a regular file inside the outputs folder, is read,
thumbnailed or moved; anything else is ``NotFound`` / ``Refused`` with words for the user.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from webui.backend.output_records import OutputEntry, OutputInfo, OutputPage, OutputTrashed
from webui.backend.records import NotFound, Refused

PER_PAGE = 36
MAX_PER_PAGE = 200


def _entry(image: Any) -> OutputEntry:
    return OutputEntry(image.id, image.name, image.folder, image.date, image.size, image.mtime_ns / 1e9)


class OutputsBrowser:
    """The index and thumbnails of one outputs folder (``root``); thumbnails in ``thumbnails``."""

    def __init__(self, root: Path, thumbnails: Path) -> None:
        from webui.outputs.browse import OutputIndex
        from webui.outputs.thumbnails import ThumbnailCache

        self.root = Path(root)
        self.index = OutputIndex(self.root)
        self.thumbnails = ThumbnailCache(thumbnails)

    def _resolve(self, output_id: str) -> tuple[Any, Path]:
        from webui.outputs.browse import OutputRefused

        try:
            return self.index.resolve(output_id)
        except OutputRefused as exc:
            raise NotFound(str(exc), "output", str(output_id)[:200]) from None

    def page(self, page: int, folder: str, date: str, per_page: int) -> OutputPage:
        from webui.outputs.browse import FOLDER_FILTERS, OutputRefused

        folder = folder or "all"
        per_page = max(1, min(int(per_page or PER_PAGE), MAX_PER_PAGE))
        try:
            images = self.index.images(folder, date or "")
            dates = self.index.dates(folder)
        except OutputRefused as exc:
            raise Refused(str(exc)) from None
        pages = max(1, math.ceil(len(images) / per_page))
        page = max(1, min(int(page or 1), pages))
        start = (page - 1) * per_page
        return OutputPage(
            entries=tuple(_entry(i) for i in images[start : start + per_page]),
            page=page,
            pages=pages,
            total=len(images),
            per_page=per_page,
            folder=folder,
            date=date or "",
            dates=tuple(dates),
            folders=tuple((label, key) for key, (label, _) in FOLDER_FILTERS.items()),
        )

    def info(self, output_id: str) -> OutputInfo:
        from webui.outputs.infotext import parse_infotext
        from webui.outputs.writer import read_infotext
        from webui.security.images import NotAnImage, open_lazily

        image, path = self._resolve(output_id)
        width = height = 0
        text = ""
        try:
            with open_lazily(path) as opened:
                width, height = opened.size
                text = read_infotext(opened) or ""
        except (NotAnImage, OSError, ValueError):
            pass  # listed by its name, but not a readable image: no size, no infotext
        return OutputInfo(
            id=image.id,
            name=image.name,
            folder=image.folder,
            date=image.date,
            folder_path=str(path.parent),
            size=image.size,
            mtime=image.mtime_ns / 1e9,
            width=width,
            height=height,
            infotext=text,
            parameters=parse_infotext(text) if text else {},
        )

    def image(self, output_id: str) -> Any:
        from webui.security.images import NotAnImage, open_image

        image, path = self._resolve(output_id)
        try:
            return open_image(path)
        except (NotAnImage, OSError) as exc:
            raise Refused(f"{image.name} cannot be shown: {exc}") from None

    def thumbnail(self, output_id: str) -> Any:
        from webui.security.images import NotAnImage

        image, path = self._resolve(output_id)
        try:
            return self.thumbnails.image(path)
        except (NotAnImage, OSError) as exc:
            raise Refused(f"{image.name} has no thumbnail: {exc}") from None

    def trash(self, output_id: str) -> OutputTrashed:
        image, _ = self._resolve(output_id)
        try:
            moved = self.index.trash(image.id)
        except OSError as exc:
            raise Refused(f"{image.name} could not be moved to the trash: {exc.strerror or exc}") from None
        return OutputTrashed(image.id, tuple(str(p) for p in moved))


def outputs_browser(services: Any, current: OutputsBrowser | None) -> OutputsBrowser:
    """``current`` when it still serves the app's outputs folder, else a new browser for it."""
    root = Path(getattr(services.writer, "root", None) or services.paths.outputs)
    if current is not None and current.root == root:
        return current
    return OutputsBrowser(root, Path(services.paths.cache) / "thumbnails")
