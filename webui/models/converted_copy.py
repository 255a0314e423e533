"""The weights a load had to compute (cast to another precision, or made by the conversion), kept in
``cache/converted/`` as one safetensors file per checkpoint and precision, so that later loads map them
instead of computing them again.

A checkpoint whose weights are already in the compute precision needs no copy: its own file is mapped. A
fp16 file computed in bf16 or fp32 on a CPU (the usual case there) would otherwise cast every weight on
every load, which on a 2-core machine takes longer than reading the file (SDXL: 9 s against 1.6 s). The
copy is written once, at the first load that cast, and holds only those weights.

The copies are a cache: each names the load map, the file's stamp and the precision it was made for in
its metadata, and a copy that does not match is ignored and replaced. They are bounded by a disk budget
(``converted_cache_gib``; the default is half of the disk's free space): a copy unused for a day makes room
for a new one, and when the recently used ones fill it, a new one is not kept.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from webui.models.load_map import TORCH_DTYPES, Span, contiguous_stride
from webui.models.safetensors_header import SafetensorsHeader, read_header

log = logging.getLogger(__name__)

COPY_DIR = "converted"
COPY_VERSION = "1"
GIB = 1024**3
AUTO = -1.0
# The auto budget: this share of what the disk has free (plus what the copies take already)...
AUTO_SHARE = 0.5
# ...and never a copy that would leave the disk with less than this free.
MIN_FREE_BYTES = 4 * GIB
# A copy unused for this long may be removed to make room for another.
IDLE_SECONDS = 24 * 3600


@dataclass(frozen=True)
class ConvertedCopy:
    """A stored copy: its file and, per component, where each of its weights lies in it."""

    path: Path
    header: SafetensorsHeader
    spans: Mapping[str, Mapping[str, Span]]


def copy_file(cache_dir: Path, map_key: str, dtype_name: str) -> Path:
    return Path(cache_dir) / COPY_DIR / f"{map_key}-{dtype_name}.safetensors"


def _metadata(map_key: str, stamp: tuple[int, int], dtype_name: str) -> dict[str, str]:
    return {
        "webui_converted_copy": COPY_VERSION,
        "map_key": map_key,
        "stamp": f"{stamp[0]}:{stamp[1]}",
        "dtype": dtype_name,
    }


def find(cache_dir: Path, map_key: str, stamp: tuple[int, int], dtype_name: str) -> ConvertedCopy | None:
    """The stored copy for this map, file stamp and precision, or None (none, or made for something else:
    then it is removed)."""
    path = copy_file(cache_dir, map_key, dtype_name)
    if not path.is_file():
        return None
    try:
        header = read_header(path)
    except Exception as exc:  # noqa: BLE001 - a damaged copy is only a cache miss
        log.info("ignoring the converted copy %s: %s", path.name, exc)
        _remove(path)
        return None
    if dict(header.metadata) != _metadata(map_key, stamp, dtype_name):
        log.info("the converted copy %s was made for another version of its file; it is made again", path.name)
        _remove(path)
        return None
    spans: dict[str, dict[str, Span]] = {}
    for name, info in header.tensors.items():
        component, _, weight = name.partition("/")
        dtype = TORCH_DTYPES.get(info.dtype)
        if not weight or dtype is None:
            return None
        spans.setdefault(component, {})[weight] = Span(
            dtype, info.shape, contiguous_stride(info.shape), header.data_start + info.start
        )
    _touch(path)
    return ConvertedCopy(path, header, spans)


def write(
    cache_dir: Path,
    map_key: str,
    stamp: tuple[int, int],
    dtype_name: str,
    tensors: Mapping[str, Any],
    budget: int,
) -> float | None:
    """Store ``tensors`` ("component/weight" -> tensor) as the copy for this map and precision, if the
    budget and the disk allow (older copies leave first). Returns the seconds it took, or None when it was
    not written (the reason is logged)."""
    import safetensors.torch

    if not tensors or budget <= 0:
        return None
    need = sum(t.nbytes for t in tensors.values())
    path = copy_file(cache_dir, map_key, dtype_name)
    if need > budget:
        log.info(
            "not keeping a converted copy (%.1f GiB) of this checkpoint: more than its budget of %.1f GiB"
            " (converted_cache_gib); each load casts its weights again",
            need / GIB,
            budget / GIB,
        )
        return None
    start = time.perf_counter()
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        _make_room(path.parent, need, budget, keep=path)
    except _NoRoom as full:
        log.info(
            "not keeping a converted copy (%.1f GiB) of this checkpoint: the copies of models used in the last"
            " day take %.1f GiB of the %.1f GiB budget (converted_cache_gib); its loads cast its weights",
            need / GIB,
            full.used / GIB,
            budget / GIB,
        )
        return None
    free = shutil.disk_usage(path.parent).free
    if free - need < MIN_FREE_BYTES:
        log.info(
            "not keeping a converted copy (%.1f GiB): the disk of %s has %.1f GiB free",
            need / GIB,
            path.parent,
            free / GIB,
        )
        return None
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        safetensors.torch.save_file(
            {k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=_metadata(map_key, stamp, dtype_name)
        )
        tmp.replace(path)
    except (OSError, RuntimeError, ValueError) as exc:  # a full or read-only disk costs only the cast next time
        _remove(tmp)
        log.warning("could not store a converted copy in %s: %s", path.parent, exc)
        return None
    return time.perf_counter() - start


def budget_bytes(setting_gib: float, cache_dir: Path) -> int:
    """The copies' disk budget in bytes: ``setting_gib`` GiB, or (-1) half of the disk's free space plus
    what the copies take now."""
    if setting_gib >= 0:
        return int(setting_gib * GIB)
    folder = Path(cache_dir) / COPY_DIR
    probe = folder if folder.is_dir() else Path(cache_dir)
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        free = shutil.disk_usage(probe).free
    except OSError:
        return 0
    return int(AUTO_SHARE * (free + used_bytes(folder)))


def used_bytes(folder: Path) -> int:
    return sum(size for _path, size, _mtime in _copies(folder))


def _copies(folder: Path) -> list[tuple[Path, int, float]]:
    out = []
    try:
        entries = list(Path(folder).glob("*.safetensors"))
    except OSError:
        return out
    for path in entries:
        try:
            st = path.stat()
        except OSError:
            continue
        out.append((path, st.st_size, st.st_mtime))
    return out


def _make_room(folder: Path, need: int, budget: int, keep: Path, now: float | None = None) -> None:
    """Remove copies not used for ``IDLE_SECONDS`` (the longest unused first) until ``need`` more bytes fit
    in ``budget``. Copies used more recently stay: models used in turn would otherwise push each other out
    and write their copies again on every switch (then the new one is not kept, and its loads cast)."""
    now = time.time() if now is None else now
    copies = sorted((c for c in _copies(folder) if c[0] != keep), key=lambda c: c[2])
    used = sum(size for _p, size, _m in copies)
    for path, size, mtime in copies:
        if used + need <= budget or now - mtime < IDLE_SECONDS:
            break
        log.info("removed the converted copy %s (%.1f GiB, unused for a day): room for another", path.name, size / GIB)
        _remove(path)
        used -= size
    if used + need > budget:
        raise _NoRoom(used)


class _NoRoom(Exception):
    def __init__(self, used: int) -> None:
        super().__init__(used)
        self.used = used


def _touch(path: Path) -> None:
    """Mark a copy as used now (the budget removes the least recently used first)."""
    try:
        os.utime(path)
    except OSError:
        pass


def _remove(path: Path) -> None:
    try:
        path.unlink(missing_ok=True)
    except OSError:
        pass
