"""A1111-style model hashes, computed lazily and cached on disk.

* ``sha256_file``: the full sha256 (A1111 shows its first 10 hex digits, ``short_hash``,
  in infotexts as ``Model hash: 6ce0161689``).
* ``legacy_model_hash``: A1111's old "model hash" (sha256 of 64 KiB at offset 1 MiB,
  first 8 hex digits), still found in older infotexts.
* ``HashCache``: a JSON file mapping absolute paths to their sha256 with the size and
  mtime they had when hashed, so a changed file is hashed again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import threading
from pathlib import Path
from typing import Callable

log = logging.getLogger(__name__)

CHUNK_SIZE = 1 << 20
SHORT_HASH_LEN = 10
LEGACY_OFFSET = 0x100000
LEGACY_LENGTH = 0x10000
CACHE_VERSION = 1


def sha256_file(path: Path | str, chunk: int = CHUNK_SIZE) -> str:
    """The sha256 of a file as 64 lowercase hex digits, read ``chunk`` bytes at a time."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def short_hash(sha256: str) -> str:
    """A1111's short hash: the first 10 hex digits of the sha256."""
    return sha256[:SHORT_HASH_LEN].lower()


def legacy_model_hash(path: Path | str) -> str:
    """A1111's old model hash: sha256 of 0x10000 bytes at offset 0x100000, first 8 hex.

    A file shorter than 1 MiB hashes the (empty or short) remainder, as A1111 did.
    """
    with open(path, "rb") as f:
        f.seek(LEGACY_OFFSET)
        return hashlib.sha256(f.read(LEGACY_LENGTH)).hexdigest()[:8]


class HashCache:
    """Lazily computed sha256 of files, persisted to ``cache_file`` (JSON).

    Entries are keyed by the resolved absolute path and remember the file's size and
    ``st_mtime_ns``; a mismatch means the file changed and is hashed again. Safe to
    share between threads: the table is guarded by a lock, and hashing itself runs
    outside it so one large file does not block lookups of others. A file is hashed by
    one thread at a time: a second ``get(compute=True)`` for it waits for the hash
    already running (the background hash after a load, the first image's infotext)
    instead of reading the file again. The cache file is read on first use and
    rewritten atomically (temp file + ``os.replace``).
    """

    def __init__(self, cache_file: Path | str, hasher: Callable[[Path], str] = sha256_file) -> None:
        self.cache_file = Path(cache_file)
        self._hasher = hasher
        self._lock = threading.Lock()
        self._entries: dict[str, dict] | None = None  # loaded on first use
        self._running: dict[str, threading.Event] = {}  # path -> set when its hash in progress ends

    def get(self, path: Path | str, compute: bool = True) -> str | None:
        """The sha256 of ``path``; None when not cached (or stale) and ``compute`` is False.

        Raises ``FileNotFoundError`` when the file does not exist.
        """
        while True:
            key, size, mtime_ns = _identity(path)
            with self._lock:
                entry = self._loaded().get(key)
                if entry and entry.get("size") == size and entry.get("mtime_ns") == mtime_ns:
                    return entry["sha256"]
                if not compute:
                    return None
                running = self._running.get(key)
                if running is None:
                    self._running[key] = done = threading.Event()
            if running is None:
                return self._compute(key, size, mtime_ns, done)
            running.wait()  # then look again: cached now, or hash it here if that run failed

    def _compute(self, key: str, size: int, mtime_ns: int, done: threading.Event) -> str:
        try:
            digest = self._hasher(Path(key))
            with self._lock:
                # The stat taken before hashing is stored: if the file changed meanwhile,
                # the next call sees a different stat and hashes it again.
                self._loaded()[key] = {"size": size, "mtime_ns": mtime_ns, "sha256": digest}
                self._save()
            return digest
        finally:
            with self._lock:
                self._running.pop(key, None)
            done.set()

    def short(self, path: Path | str, compute: bool = True) -> str | None:
        digest = self.get(path, compute=compute)
        return short_hash(digest) if digest else None

    def _loaded(self) -> dict[str, dict]:
        if self._entries is None:
            self._entries = self._read()
        return self._entries

    def _read(self) -> dict[str, dict]:
        try:
            doc = json.loads(self.cache_file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            log.warning("hash cache %s is unreadable (%s); hashes will be computed again", self.cache_file, exc)
            return {}
        entries = doc.get("entries") if isinstance(doc, dict) and doc.get("version") == CACHE_VERSION else None
        if not isinstance(entries, dict):
            log.warning("hash cache %s has an unknown layout; hashes will be computed again", self.cache_file)
            return {}
        return {k: v for k, v in entries.items() if _valid_entry(v)}

    def _save(self) -> None:
        """Write the table atomically; a failure is logged (the hashes stay in memory)."""
        doc = {"version": CACHE_VERSION, "entries": self._entries}
        tmp: str | None = None
        try:
            self.cache_file.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=self.cache_file.name + ".", suffix=".tmp", dir=self.cache_file.parent)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(doc, f, indent=1, sort_keys=True)
            os.replace(tmp, self.cache_file)
        except OSError as exc:
            log.warning("cannot write hash cache %s: %s", self.cache_file, exc)
            if tmp is not None:
                Path(tmp).unlink(missing_ok=True)

def _identity(path: Path | str) -> tuple[str, int, int]:
    resolved = Path(path).resolve()
    st = resolved.stat()
    return str(resolved), st.st_size, st.st_mtime_ns


def _valid_entry(value: object) -> bool:
    return (
        isinstance(value, dict)
        and isinstance(value.get("size"), int)
        and isinstance(value.get("mtime_ns"), int)
        and isinstance(value.get("sha256"), str)
    )
