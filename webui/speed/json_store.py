"""A small JSON file of measurements keyed by what they depend on (machine, model type ...): read one entry,
write one entry atomically. A missing, damaged or read-only file only costs measuring again."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def read_all(path: Path | None) -> dict:
    """Every entry of the file ({} when there is none or it is not a JSON object)."""
    if path is None:
        return {}
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def read_entry(path: Path | None, key: str) -> Any:
    """The entry stored under ``key``, or None."""
    return read_all(path).get(key)


def write_entry(path: Path | None, key: str, value: Any, what: str) -> None:
    """Store ``value`` under ``key``, keeping the other entries (temp file + rename); ``what`` names the
    measurement in the warning when the folder cannot be written."""
    if path is None:
        return
    path = Path(path)
    data = read_all(path)
    data[key] = value
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data, indent=1))
        tmp.replace(path)
    except OSError as exc:  # a read-only cache only costs the measurement next time
        log.warning("could not store the %s in %s: %s", what, path, exc)
