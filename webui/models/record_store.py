"""Model records kept between starts (``cache/model_records.json``): a file is identified once, not every start.

Identifying a file reads and checks its header (each tensor's dtype, shape and offsets) and matches it
against the families: 20-40 ms for an SDXL checkpoint, and an A1111 models folder holds dozens of
checkpoints and hundreds of LoRAs, all scanned before the first page. ``RecordStore.get`` gives back the
record made before while the file's (size, mtime_ns) is the same and so is the code that made it
(``code_version``: the size and mtime of every module of the ``webui`` package); anything else is
identified again. Only records that come back from JSON exactly as they were are kept.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from collections.abc import Iterable
from dataclasses import fields
from pathlib import Path
from typing import Any

from webui.models.identify import ModelRecord

log = logging.getLogger(__name__)

PACKAGE = Path(__file__).resolve().parent.parent
# ModelRecord fields that JSON cannot hold as they are: field -> (to JSON, from JSON).
_CONVERT: dict[str, tuple[Any, Any]] = {
    "path": (str, Path),
    "components": (sorted, frozenset),
    "notes": (list, tuple),
    "ignored": (list, tuple),
    "stamp": (lambda v: None if v is None else list(v), lambda v: None if v is None else tuple(v)),
}


def code_version(package: Path = PACKAGE) -> str:
    """Changes whenever a module of the package does (an upgrade, an edit): records made by other code go."""
    stats = []
    for path in sorted(package.rglob("*.py")):
        st = path.stat()
        stats.append(f"{path.relative_to(package).as_posix()}:{st.st_size}:{st.st_mtime_ns}")
    return hashlib.sha256("\n".join(stats).encode()).hexdigest()[:16]


def to_json(record: ModelRecord) -> dict[str, Any]:
    return {f.name: _CONVERT.get(f.name, (_same, _same))[0](getattr(record, f.name)) for f in fields(record)}


def from_json(data: dict[str, Any]) -> ModelRecord:
    return ModelRecord(**{name: _CONVERT.get(name, (_same, _same))[1](value) for name, value in data.items()})


def _same(value: Any) -> Any:
    return value


def _key(kind: str, item: Path) -> str:
    return f"{kind}:{item}"


class RecordStore:
    """Records by (catalog kind, path), read from ``path`` on first use and written by ``save``."""

    def __init__(self, path: Path, version: str | None = None) -> None:
        self.path = Path(path)
        self._version = version
        self._lock = threading.Lock()
        self._records: dict[str, dict[str, Any]] | None = None  # read on first use
        self._changed = False

    def _loaded(self) -> dict[str, dict[str, Any]]:
        if self._records is None:
            if self._version is None:
                self._version = code_version()
            try:
                data = json.loads(self.path.read_text(encoding="utf-8"))
                ok = isinstance(data, dict) and data.get("version") == self._version
                self._records = dict(data["records"]) if ok else {}
            except (OSError, ValueError, KeyError, TypeError):
                self._records = {}
        return self._records

    def get(self, kind: str, item: Path, stamp: tuple[int, int]) -> ModelRecord | None:
        """The record made before for this file as it is now (same size and mtime), else None."""
        with self._lock:
            stored = self._loaded().get(_key(kind, item))
        if not stored or stored.get("stamp") != list(stamp):
            return None
        try:
            return from_json(stored["record"])
        except (KeyError, TypeError, ValueError):
            return None

    def put(self, kind: str, item: Path, stamp: tuple[int, int], record: ModelRecord) -> None:
        data = to_json(record)
        try:
            if from_json(json.loads(json.dumps(data))) != record:
                return  # something in it JSON would change (a tuple in info): identified each start instead
        except (TypeError, ValueError):
            return
        with self._lock:
            self._loaded()[_key(kind, item)] = {"stamp": list(stamp), "record": data}
            self._changed = True

    def save(self, present: Iterable[tuple[str, Path]]) -> None:
        """Keep the records of ``present`` (catalog kind, path) only, and write the file if anything changed."""
        keep = {_key(kind, item) for kind, item in present}
        with self._lock:
            records = self._loaded()
            gone = [key for key in records if key not in keep]
            for key in gone:
                del records[key]
            if not (gone or self._changed):
                return
            text = json.dumps({"version": self._version, "records": records})
            self._changed = False
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(text, encoding="utf-8")
            os.replace(tmp, self.path)
        except OSError as exc:  # a read-only cache folder: files are identified again next start
            log.warning("could not keep the model records in %s: %s", self.path, exc)
            tmp.unlink(missing_ok=True)
