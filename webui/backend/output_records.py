"""The outputs browser's plain data: a page of past images, one image's details, a move to the trash."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class OutputEntry:
    """One image in the outputs folder; ``id`` (its path relative to the folder) names it to the backend."""

    id: str
    name: str
    folder: str  # the category folder: "txt2img-images", "img2img-images", "extras-images", "*-grids"
    date: str  # its date folder ("" when it lies directly in the category folder)
    size: int  # bytes
    mtime: float  # seconds since the epoch


@dataclass(frozen=True)
class OutputPage:
    """A page of the outputs, newest first, and what the filters can choose from."""

    entries: tuple[OutputEntry, ...]
    page: int  # 1-based, clamped to the pages there are
    pages: int
    total: int
    per_page: int
    folder: str  # the folder filter key ("all", "txt2img", "img2img", "extras", "grids")
    date: str
    dates: tuple[str, ...] = ()  # the date folders of this folder filter, newest first
    folders: tuple[tuple[str, str], ...] = ()  # (label, key) of every folder filter


@dataclass(frozen=True)
class OutputInfo:
    """One image's details: where it is and its infotext (PNG ``parameters`` or EXIF)."""

    id: str
    name: str
    folder: str
    date: str
    folder_path: str  # the folder on the server that holds it (shown, never opened)
    size: int
    mtime: float
    width: int
    height: int
    infotext: str  # "" when the image has none
    parameters: dict[str, Any] = field(default_factory=dict)  # parse_infotext's dict (A1111 keys)


@dataclass(frozen=True)
class OutputTrashed:
    """An image moved to ``outputs/.trash/<date>/`` (with its sidecar ``.txt``, if any)."""

    id: str
    moved_to: tuple[str, ...]
