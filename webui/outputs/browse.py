"""The outputs browser's index: every image under ``outputs/``, newest first, without opening one.

The writer's layout (``webui.outputs.writer``): ``outputs/<category folder>/<date>/<file>``. The
index walks only the category folders (``txt2img-images``, ``img2img-images``, ``extras-images``,
``txt2img-grids``, ``img2img-grids``) with ``os.scandir`` and keeps, per folder, the folder's
mtime and the images it held (name, size, mtime from ``DirEntry.stat``, which needs no extra
system call on most platforms). A later listing stats each folder once and scans again only those
whose mtime moved (a file added, removed or renamed changes it); a folder changed less than
``RACY_SECONDS`` before its scan is scanned again, since its mtime may not yet show a change made in
the same clock tick. Hidden entries (``.trash``, the writer's temp files) and symlinks are skipped,
so nothing outside the outputs folder is ever listed.

An image's id is its path relative to the outputs folder (POSIX separators). ``resolve(id)``
accepts only an id the index holds now, then checks again that the file is a regular file (not a
symlink) inside the outputs folder: a path a client makes up (``../x``, ``/etc/passwd``, a link
out of the folder) is refused. ``trash(id)`` moves an image and its A1111 sidecar ``.txt`` to
``outputs/.trash/<today>/<id>``; nothing is ever deleted.
"""

from __future__ import annotations

import os
import stat
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path, PurePosixPath

from webui.security.files import is_inside

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
TRASH_FOLDER = ".trash"
RACY_SECONDS = 2.0
MAX_DEPTH = 3  # date folders under a category folder (a date format with "/" nests them)

# Filter key -> (label, category folders). img2img and inpaint share a folder, as in A1111.
FOLDER_FILTERS: dict[str, tuple[str, tuple[str, ...]]] = {
    "all": ("All folders", ("txt2img-images", "img2img-images", "extras-images", "txt2img-grids", "img2img-grids")),
    "txt2img": ("txt2img", ("txt2img-images",)),
    "img2img": ("img2img + inpaint", ("img2img-images",)),
    "extras": ("Extras", ("extras-images",)),
    "grids": ("Grids", ("txt2img-grids", "img2img-grids")),
}
ALL_FOLDERS = FOLDER_FILTERS["all"][1]


class OutputRefused(ValueError):
    """An id that is not an image of the outputs folder; the message says what to do."""


@dataclass(frozen=True)
class IndexedImage:
    id: str  # the path relative to the outputs folder, "/"-separated
    folder: str  # the category folder ("txt2img-images" ...)
    date: str  # the folders between the category folder and the file ("" when none)
    name: str
    size: int
    mtime_ns: int


@dataclass(frozen=True)
class _Scan:
    mtime_ns: int
    scanned_at: float
    images: tuple[IndexedImage, ...]
    subdirs: tuple[str, ...]  # relative ids of the child folders


def _regular_file(path: Path) -> os.stat_result | None:
    """The stat of ``path`` when it is a regular file itself (not a symlink), else None."""
    try:
        st = os.lstat(path)
    except OSError:
        return None
    return st if stat.S_ISREG(st.st_mode) else None


def _split(rel: str) -> tuple[str, str]:
    """(category folder, date) of a folder id."""
    parts = rel.split("/")
    return parts[0], "/".join(parts[1:])


class OutputIndex:
    """The images under ``root``; safe to share between threads (one per backend, no globals)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._scans: dict[str, _Scan] = {}
        self._by_id: dict[str, IndexedImage] = {}
        self._sorted: tuple[IndexedImage, ...] = ()
        self._version: tuple = ()
        self._lock = threading.Lock()

    # --- scanning ------------------------------------------------------------------------------------

    def _scan_folder(self, rel: str, st: os.stat_result) -> _Scan:
        folder, date = _split(rel)
        images: list[IndexedImage] = []
        subdirs: list[str] = []
        depth = rel.count("/")
        with os.scandir(self.root / rel) as entries:
            for entry in entries:
                if entry.name.startswith("."):
                    continue
                try:
                    if entry.is_dir(follow_symlinks=False):
                        if depth < MAX_DEPTH:
                            subdirs.append(f"{rel}/{entry.name}")
                        continue
                    if not entry.is_file(follow_symlinks=False):
                        continue  # symlinks, sockets...
                    if not entry.name.lower().endswith(IMAGE_SUFFIXES):
                        continue
                    est = entry.stat(follow_symlinks=False)
                except OSError:
                    continue  # gone meanwhile
                images.append(
                    IndexedImage(f"{rel}/{entry.name}", folder, date, entry.name, est.st_size, est.st_mtime_ns)
                )
        return _Scan(st.st_mtime_ns, time.time(), tuple(images), tuple(sorted(subdirs)))

    def _visit(self, rel: str, fresh: dict[str, _Scan]) -> None:
        try:
            st = os.lstat(self.root / rel)
        except OSError:
            return
        if not stat.S_ISDIR(st.st_mode):
            return  # a symlinked or missing folder is not followed
        old = self._scans.get(rel)
        reusable = old is not None and old.mtime_ns == st.st_mtime_ns
        if reusable and old.scanned_at - st.st_mtime_ns / 1e9 < RACY_SECONDS:
            reusable = False
        try:
            scan = old if reusable else self._scan_folder(rel, st)
        except OSError:
            return
        fresh[rel] = scan
        for sub in scan.subdirs:
            self._visit(sub, fresh)

    def refresh(self) -> None:
        """Bring the index up to date: one stat per folder, a scan of the folders that changed."""
        with self._lock:
            fresh: dict[str, _Scan] = {}
            for folder in ALL_FOLDERS:
                self._visit(folder, fresh)
            version = tuple((rel, id(scan)) for rel, scan in sorted(fresh.items()))
            self._scans = fresh
            if version != self._version:
                images = [image for scan in fresh.values() for image in scan.images]
                images.sort(key=lambda i: (i.mtime_ns, i.id), reverse=True)
                self._sorted = tuple(images)
                self._by_id = {image.id: image for image in images}
                self._version = version

    def forget(self, image_id: str) -> None:
        """Drop the folder of ``image_id`` from the cache (it changed; the next refresh scans it)."""
        with self._lock:
            self._scans.pop(str(PurePosixPath(image_id).parent), None)

    # --- reading ------------------------------------------------------------------------------------

    def images(self, folder: str = "all", date: str = "") -> list[IndexedImage]:
        """The images of a folder filter (``FOLDER_FILTERS`` key) and date ("": every date), newest first."""
        folders = folder_filter(folder)
        self.refresh()
        with self._lock:
            everything = self._sorted
        return [i for i in everything if i.folder in folders and (not date or i.date == date)]

    def dates(self, folder: str = "all") -> list[str]:
        """The date folders of a folder filter, newest first (they sort as text: ``YYYY-MM-DD``)."""
        folders = folder_filter(folder)
        with self._lock:
            found = {_split(rel)[1] for rel, scan in self._scans.items() if scan.images and _split(rel)[0] in folders}
        return sorted((d for d in found if d), reverse=True)

    def resolve(self, image_id: object) -> tuple[IndexedImage, Path]:
        """The image and its path for an id the index holds; ``OutputRefused`` for anything else."""
        rel = check_id(image_id)
        with self._lock:
            image = self._by_id.get(rel)
        if image is None:
            self.refresh()
            with self._lock:
                image = self._by_id.get(rel)
        if image is None:
            raise OutputRefused(
                f"{PurePosixPath(rel).name} is not in the outputs folder (moved or deleted?); refresh the list"
            )
        path = self.root.joinpath(*rel.split("/"))
        if _regular_file(path) is None or not is_inside(path, self.root):
            raise OutputRefused(f"{image.name} is no longer a file in the outputs folder; refresh the list")
        return image, path

    # --- trash --------------------------------------------------------------------------------------

    def trash(self, image_id: object, now: datetime | None = None) -> list[Path]:
        """Move the image (and its sidecar ``.txt``) to ``.trash/<today>/<id>``; the new paths."""
        image, path = self.resolve(image_id)
        day = (now or datetime.now()).strftime("%Y-%m-%d")
        target = _free_name(self.root.joinpath(TRASH_FOLDER, day, *image.id.split("/")))
        target.parent.mkdir(parents=True, exist_ok=True)
        moved = [target]
        os.rename(path, target)
        sidecar = path.with_suffix(".txt")
        if _regular_file(sidecar) is not None:
            side_target = target.with_suffix(".txt")
            if not side_target.exists():
                os.rename(sidecar, side_target)
                moved.append(side_target)
        self.forget(image.id)
        return moved


def _free_name(target: Path) -> Path:
    """``target``, or ``<stem>-1<suffix>``, ``-2``... when taken (a second image of the same name trashed today)."""
    candidate, n = target, 0
    while candidate.exists() or candidate.with_suffix(".txt").exists():
        n += 1
        candidate = target.with_name(f"{target.stem}-{n}{target.suffix}")
    return candidate


def folder_filter(key: str) -> tuple[str, ...]:
    """The category folders of a filter key; ``OutputRefused`` naming the valid keys."""
    try:
        return FOLDER_FILTERS[key or "all"][1]
    except (KeyError, TypeError):
        raise OutputRefused(f"unknown folder {key!r}; use one of: {', '.join(FOLDER_FILTERS)}") from None


def check_id(image_id: object) -> str:
    """The id as a relative POSIX path inside the outputs folder, or ``OutputRefused`` (``..``, absolute...)."""
    if not isinstance(image_id, str) or not image_id or len(image_id) > 1024:
        raise OutputRefused("no image chosen; pick one from the list")
    if "\\" in image_id or "\x00" in image_id or image_id.startswith("/"):
        raise OutputRefused("that is not an image of the outputs folder; pick one from the list")
    parts = image_id.split("/")
    if any(part in ("", ".", "..") or part.startswith(".") for part in parts) or parts[0] not in ALL_FOLDERS:
        raise OutputRefused("that is not an image of the outputs folder; pick one from the list")
    return image_id
