"""Uploads through the page: images only, unguessable names, bounded in number and size, cleaned up.

Gradio's ``POST /gradio_api/upload`` keeps any file under ``<upload folder>/<sha256 of its bytes>/<name>``:
the same bytes land in the same, predictable folder, and any type is kept for as long as the app runs
(two uploads named ``extension.toml`` and ``main.py`` made an extension folder). ``UploadGuard`` lets
Gradio receive the files (its multipart parser, size limit and name checks), then, before answering:

* checks every file from its bytes (``webui.security.images``: PNG, JPEG or WebP only); one bad file and
  the whole upload is deleted and refused (415, with "this is not an image" in words);
* moves each file to ``<upload folder>/uploads/<128 random bits>/<name>`` and answers with the new paths
  (Gradio's own record of uploads, ``blocks.upload_file_set``, follows the move);
* refuses more than ``max_files`` files in one request, and then prunes ``uploads/``: anything older than
  ``max_age`` seconds, then the oldest beyond ``max_entries`` uploads or ``max_bytes`` in all.

What the UI's events later do with an upload is checked by ``webui.security.gradio_guard``.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from webui.security.files import is_inside
from webui.security.site_guard import send_json_error

log = logging.getLogger(__name__)

UPLOAD_PATHS = ("/gradio_api/upload", "/gradio_api/upload/")
UPLOADS_SUBFOLDER = "uploads"


def _size(folder: Path) -> int:
    total = 0
    for parent, _, names in os.walk(folder):  # os.walk skips what vanishes while it reads
        for name in names:
            try:
                total += os.lstat(os.path.join(parent, name)).st_size
            except OSError:
                continue
    return total


RECENT_SECONDS = 120.0  # how long a moved upload is remembered for an identical upload still in flight
EMPTY_FOLDER_SECONDS = 600.0  # Gradio's empty content-named folders are swept once this old


@dataclass
class UploadStore:
    """Where checked uploads live, and the bounds that keep the folder from growing without end."""

    upload_root: Path  # Gradio's upload folder (GRADIO_TEMP_DIR)
    max_files: int = 16  # per request (the page sends one image at a time)
    max_entries: int = 200
    max_bytes: int = 2 * 1024**3
    max_age: float = 24 * 3600.0
    # One upload is checked and moved at a time; ``_recent`` maps a file Gradio stored to where it went.
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)
    _recent: OrderedDict = field(default_factory=OrderedDict, init=False, repr=False)

    @property
    def folder(self) -> Path:
        return Path(self.upload_root) / UPLOADS_SUBFOLDER

    def new_home(self, name: str) -> Path:
        """An unguessable, new folder for one upload (128 random bits), and the file's path in it."""
        folder = self.folder / secrets.token_hex(16)
        folder.mkdir(parents=True, exist_ok=False)
        return folder / name

    def source_of(self, stored: Path) -> Path:
        """The file to check and keep for what Gradio stored at ``stored``.

        Gradio names its folder after the bytes: the same image uploaded twice at once (the inpaint
        editor sends its unchanged layer again) lands on the same path, and the first request has moved
        it away by the time the second looks. The second then takes a copy of the first's result.
        """
        if stored.exists():
            return stored
        now = time.monotonic()
        while self._recent and next(iter(self._recent.values()))[0] < now - RECENT_SECONDS:
            self._recent.popitem(last=False)
        return Path(self._recent.get(str(stored), (0.0, str(stored)))[1])

    def remember(self, stored: Path, kept: Path) -> None:
        self._recent[str(stored)] = (time.monotonic(), str(kept))
        self._recent.move_to_end(str(stored))

    def prune(self, now: float | None = None) -> int:
        """Remove uploads past their age, then the oldest beyond the count and size bounds; return how many.

        Empty content-named folders Gradio left (see ``_forget``) go too once they are old.
        """
        now = time.time() if now is None else now
        self._sweep_empty_folders(now)
        try:
            entries = sorted(
                ((p.stat().st_mtime, p) for p in self.folder.iterdir() if p.is_dir() and not p.is_symlink()),
                key=lambda pair: pair[0],
            )
        except OSError:
            return 0
        sizes = {p: _size(p) for _, p in entries}
        total = sum(sizes.values())
        removed = 0
        for index, (mtime, path) in enumerate(entries):
            remaining = len(entries) - index
            if mtime >= now - self.max_age and remaining <= self.max_entries and total <= self.max_bytes:
                break
            shutil.rmtree(path, ignore_errors=True)
            total -= sizes[path]
            removed += 1
        return removed


    def _sweep_empty_folders(self, now: float) -> None:
        try:
            folders = [p for p in Path(self.upload_root).iterdir() if p.name != UPLOADS_SUBFOLDER]
        except OSError:
            return
        for folder in folders:
            try:
                if folder.is_dir() and not folder.is_symlink() and folder.stat().st_mtime < now - EMPTY_FOLDER_SECONDS:
                    folder.rmdir()  # only when empty
            except OSError:
                continue


def _check_and_move(paths: list[Any], store: UploadStore, blocks: Any) -> tuple[list[str] | None, str]:
    """(new paths, "") once every file is a good image with a folder of its own, else (None, why not)."""
    with store._lock:
        files = [Path(p) for p in paths if isinstance(p, str)]
        problem = _problem(files, len(paths), store)
        if problem:
            for path in files:
                _forget(path, blocks)
                _remove_if_empty(path.parent)  # a refused upload leaves nothing (another of these bytes fails too)
            return None, problem
        kept = []
        for path in files:
            target = store.new_home(path.name)
            _keep(store.source_of(path), target)
            store.remember(path, target)
            _forget(path, blocks)
            if blocks is not None:
                blocks.upload_file_set.add(str(target))
            kept.append(str(target))
        store.prune()
        return kept, ""


def _problem(files: list[Path], sent: int, store: UploadStore) -> str:
    from webui.security.images import image_file_problem

    if len(files) != sent:
        return "the upload could not be read"
    if len(files) > store.max_files:
        return f"{len(files)} files at once; upload at most {store.max_files} images at a time"
    for path in files:
        if not is_inside(path, Path(store.upload_root)):
            return "the upload could not be stored"
        found = image_file_problem(store.source_of(path))
        if found:
            return f"{path.name}: {found}"
    return ""


def _keep(source: Path, target: Path) -> None:
    """``target`` becomes a file of its own with ``source``'s bytes (a hard link where the disk allows)."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


def _forget(path: Path, blocks: Any) -> None:
    """Delete a file Gradio stored and drop it from Gradio's record.

    Its content-named folder stays: another request with the same bytes may have made it already and be
    about to rename its file into it (outside any lock of ours); removing the folder then made Gradio's
    rename fail, its fallback move raise after the answer, and the page wait for ever. ``prune`` sweeps
    the empty folders once they are old.
    """
    if blocks is not None:
        blocks.upload_file_set.discard(str(path))
    try:
        path.unlink(missing_ok=True)
    except OSError:
        pass


def _remove_if_empty(folder: Path) -> None:
    try:
        folder.rmdir()
    except OSError:
        pass


class UploadGuard:
    """ASGI middleware around Gradio's upload route (see the module docstring)."""

    def __init__(self, app: Any, store: UploadStore, blocks: Any = None, max_request_bytes: int = 0) -> None:
        self.app = app
        self.store = store
        self.blocks = blocks
        self.max_request_bytes = max_request_bytes

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope.get("method") != "POST" or scope.get("path") not in UPLOAD_PATHS:
            await self.app(scope, receive, send)
            return
        length = next((v for k, v in scope.get("headers") or () if k.lower() == b"content-length"), b"")
        if self.max_request_bytes and length.isdigit() and int(length) > self.max_request_bytes:
            await send_json_error(
                send, 413, "RequestTooLarge", f"the upload is larger than {self.max_request_bytes} bytes"
            )
            return
        start: dict[str, Any] = {}
        chunks: list[bytes] = []

        async def keep(message: dict) -> None:
            if message["type"] == "http.response.start":
                start.update(message)
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))

        try:
            await self.app(scope, receive, keep)
        except Exception:
            if start.get("status") != 200:
                raise
            # Gradio answered, then its background move failed: answer what is there (checked below).
            log.exception("Gradio's upload raised after answering")
        body = b"".join(chunks)
        if start.get("status") != 200:
            await send({**start, "type": "http.response.start"})
            await send({"type": "http.response.body", "body": body})
            return
        await self._answer(body, send)

    async def _answer(self, body: bytes, send: Any) -> None:
        from starlette.concurrency import run_in_threadpool

        try:
            paths = json.loads(body)
            if not isinstance(paths, list):
                raise ValueError("not a list")
        except ValueError:
            await send_json_error(send, 500, "ServerError", "the upload could not be read back; try again")
            return
        moved, problem = await run_in_threadpool(_check_and_move, paths, self.store, self.blocks)
        if moved is None:
            log.info("refused an upload: %s", problem)
            await send_json_error(send, 415, "NotAnImage", problem)
            return
        answer = json.dumps(moved).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(answer)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": answer})
