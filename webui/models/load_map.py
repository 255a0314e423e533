"""Where each weight of a loaded pipeline comes from in a single-file checkpoint, worked out once.

diffusers' ``from_single_file`` renames, splits and reshapes the original (LDM/SGM/SD3) keys into
diffusers/transformers names on every load. Almost every converted weight is a *view* of bytes in the
file (a rename, a reshape, a ``chunk`` of a fused qkv tensor), so the conversion can be recorded once
as "weight W of component C = these bytes of the file, read as this dtype, shape and stride", and later
loads read those bytes straight from the mapped file into the final tensors (``webui.models.mapped_load``).

``trace`` runs diffusers' own per-component conversion (``load_single_file_sub_model``, what
``from_single_file`` calls for each component) on tensors that are views of one memory map of the file,
so a converted weight that shares that map's storage is a view, and its byte offset says where it
lies. The few weights the conversion computes (a ``cat`` of shift and scale, a transposed copy) are
stored in a small side file beside the map.

The map depends only on the header (names, dtypes, shapes, offsets) and the library versions; the side
file holds values, so it is tied to the file's size and modification time too. Both live in
``cache/loadmaps/``; a file that changed is traced again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import mmap
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from webui.models.identify import stamp_of
from webui.models.safetensors_header import SafetensorsHeader

log = logging.getLogger(__name__)

MAP_VERSION = 1
MAP_DIR = "loadmaps"
# Weights the conversion computes are kept in the side file; if they are more than this share of the
# file, the map does not pay (an unusual layout the conversion copies wholesale) and is not used.
MAX_EXTRA_SHARE = 0.05
# A weight that is cast is read in pieces of this many elements: large enough that Python's per-piece work
# is small and torch's thread pool casts each piece on every core, small enough to stay in the CPU's cache.
# Full-size SD 1.5 to bf16, page-cached, into memory the process had already touched, on a quiet 2-core EPYC:
# 0.44 s (1 M elements, one reader), 0.74 s (256 K), 1.36 s (32 K, two readers). Into fresh memory the same
# read takes 2-4 s: on this VM first-touch page faults, not the read or the cast, bound a load.
PIECE_ELEMENTS = 1 << 20
# How far ahead of its reads a reader asks the kernel for the file (a cold read overlaps the cast).
READ_AHEAD_BYTES = 128 << 20

# madvise(2): fault in the pages of a range for reading (Linux 5.14); Python's mmap has no name for it.
MADV_POPULATE_READ = 22

TORCH_DTYPES = {"F16": "float16", "BF16": "bfloat16", "F32": "float32", "F64": "float64"}


@dataclass(frozen=True)
class Span:
    """One weight: ``offset`` bytes into the file (or into the side file when ``extra``)."""

    dtype: str  # torch dtype name, e.g. "float16"
    shape: tuple[int, ...]
    stride: tuple[int, ...]
    offset: int = 0
    extra: bool = False


@dataclass
class LoadMap:
    key: str
    file_dtype: str
    stamp: tuple[int, int]  # (size, mtime_ns) of the file the side file was made from
    components: dict[str, dict[str, Span]] = field(default_factory=dict)
    extra_bytes: int = 0
    # target dtype name -> no NaN/inf in the weights at that precision (checked once, at the first load)
    finite: dict[str, bool] = field(default_factory=dict)

    def covers(self, names: set[str]) -> bool:
        return names <= set(self.components)


def header_key(header: SafetensorsHeader) -> str:
    """A digest of everything the conversion depends on: the tensors' names, dtypes, shapes and offsets,
    plus the versions of the libraries that convert, and of which file it is (its side file holds its values)."""
    import diffusers
    import transformers

    versions = f"v{MAP_VERSION}|diffusers {diffusers.__version__}|transformers {transformers.__version__}"
    h = hashlib.sha256(f"{versions}|{Path(header.path).resolve()}".encode())
    for name in sorted(header.tensors):
        t = header.tensors[name]
        h.update(f"|{name}:{t.dtype}:{','.join(map(str, t.shape))}:{t.start}:{t.end}".encode())
    return h.hexdigest()[:32]


def file_dtype(header: SafetensorsHeader) -> str | None:
    """The one floating dtype of the file's tensors, or None when they mix (such files take the standard load)."""
    floats = {t.dtype for t in header.tensors.values() if t.dtype in TORCH_DTYPES or t.dtype.startswith("F8")}
    if len(floats) != 1:
        return None
    return TORCH_DTYPES.get(next(iter(floats)))


def aligned(header: SafetensorsHeader) -> bool:
    """Every tensor starts at a multiple of its element size in the file (safetensors does not require it;
    the tools that write them do it): only then can each be a view of the map."""
    from webui.models.safetensors_header import DTYPE_SIZES

    return all(
        (header.data_start + t.start) % max(1, int(DTYPE_SIZES.get(t.dtype, 1))) == 0 for t in header.tensors.values()
    )


def _paths(cache_dir: Path, key: str) -> tuple[Path, Path]:
    folder = Path(cache_dir) / MAP_DIR
    return folder / f"{key}.json", folder / f"{key}.extra.safetensors"


# --- the file, mapped ----------------------------------------------------------------------------


class MappedFile:
    """A private (copy-on-write, never written) memory map of a safetensors file as one uint8 tensor."""

    def __init__(self, path: Path, header: SafetensorsHeader) -> None:
        import torch

        self.path = Path(path)
        self.header = header
        self._file = self.path.open("rb", buffering=0)
        try:
            self._mm = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_COPY)
        except BaseException:
            self._file.close()
            raise
        self.bytes = torch.frombuffer(self._mm, dtype=torch.uint8)

    def advise_sequential(self) -> None:
        """Ask the kernel to read ahead: a cold file streams at disk speed while the weights are cast."""
        advise = getattr(os, "posix_fadvise", None)
        if advise is not None:
            try:
                advise(self._file.fileno(), 0, 0, os.POSIX_FADV_SEQUENTIAL)
            except OSError:  # advice only
                pass

    def populate(self, ranges: list[tuple[int, int]]) -> None:
        """Map in the pages of ``ranges`` ((offset, bytes) of the file) now: the kernel reads what is not in
        the page cache (asked for all at once, so a cold file streams), and the model's first use then
        takes no page faults. Advice only: on a kernel without MADV_POPULATE_READ the pages come in as used."""
        merged = _merge(ranges)
        advise = getattr(os, "posix_fadvise", None)
        if advise is not None:
            for start, end in merged:
                try:
                    advise(self._file.fileno(), start, end - start, os.POSIX_FADV_WILLNEED)
                except OSError:
                    break
        page, madvise = mmap.PAGESIZE, getattr(self._mm, "madvise", None)
        for start, end in merged if madvise is not None else ():
            first = start - start % page
            try:
                madvise(MADV_POPULATE_READ, first, end - first)
            except (OSError, ValueError):
                return

    def reader(self) -> SpanReader:
        """A reader with its own file handle and buffers: one per thread."""
        return SpanReader(self)

    def tensor(self, name: str) -> Any:
        """The header's tensor ``name`` as a view of the map (no bytes read yet)."""
        import torch

        info = self.header.tensors[name]
        dtype = getattr(torch, TORCH_DTYPES.get(info.dtype, "")) if info.dtype in TORCH_DTYPES else None
        if dtype is None:
            raise KeyError(name)
        start = self.header.data_start + info.start
        return self.bytes[start : self.header.data_start + info.end].view(dtype).view(info.shape)

    def span(self, span: Span) -> Any:
        import torch

        dtype = getattr(torch, span.dtype)
        n = _extent(span)
        flat = self.bytes[span.offset : span.offset + n * dtype.itemsize].view(dtype)
        return flat.as_strided(span.shape, span.stride)

    def close(self) -> None:
        """Let go of the map. Never unmapped here (``mmap.close`` would unmap it under the tensors that are
        views of it: torch's storage holds the mmap object, not a buffer export): the map goes with the
        last tensor that uses it."""
        self.bytes = None
        self._mm = None
        self._file.close()


def _merge(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """(offset, bytes) ranges as sorted, non-overlapping (start, end) runs; gaps under 1 MiB are bridged."""
    out: list[list[int]] = []
    for offset, nbytes in sorted(ranges):
        if out and offset <= out[-1][1] + (1 << 20):
            out[-1][1] = max(out[-1][1], offset + nbytes)
        else:
            out.append([offset, offset + nbytes])
    return [(a, b) for a, b in out]


class SpanReader:
    """Reads spans of one mapped file into tensors, casting on the way; not shared between threads.

    A contiguous span is read with ``readinto``: straight into the target when the dtypes match, else
    through a buffer that stays in the CPU cache while it is cast (``PIECE_ELEMENTS`` at a time).
    fp16 <-> bf16 goes through fp32 (torch's direct conversion is scalar: 4-5x slower, measured). Measured
    2-3x faster than casting from the memory map, whose page faults and cold cache lines cost more than
    the copy. Strided spans are copied from the map.
    """

    def __init__(self, mapped: MappedFile) -> None:
        import torch

        self.mapped = mapped
        self._file = mapped.path.open("rb", buffering=0)
        self._bounce = torch.empty(PIECE_ELEMENTS * 8, dtype=torch.uint8)
        self._view = memoryview(self._bounce.numpy())
        self._scratch = torch.empty(PIECE_ELEMENTS, dtype=torch.float32)
        self._ahead = -1  # the file is asked for up to here, ahead of the reads

    def close(self) -> None:
        self._file.close()

    def _read_ahead(self, offset: int, nbytes: int) -> None:
        """Keep READ_AHEAD_BYTES asked for beyond what is being read, so that a cold file streams from
        the disk while the pieces before are cast (the kernel reads it in the background)."""
        advise = getattr(os, "posix_fadvise", None)
        if advise is None:
            return
        if self._ahead < offset:
            self._ahead = offset
        want = offset + nbytes + READ_AHEAD_BYTES
        if want <= self._ahead + READ_AHEAD_BYTES // 2:
            return
        try:
            advise(self._file.fileno(), self._ahead, want - self._ahead, os.POSIX_FADV_WILLNEED)
        except OSError:  # advice only
            return
        self._ahead = want

    def read_into(self, span: Span, target: Any) -> None:
        import torch

        dtype = getattr(torch, span.dtype)
        self._read_ahead(span.offset, target.numel() * dtype.itemsize)
        if tuple(span.stride) != contiguous_stride(span.shape) or not target.is_contiguous():
            target.copy_(self.mapped.span(span))
            return
        if target.dtype == dtype:
            _read_full(self._file, memoryview(target.view(-1).view(torch.uint8).numpy()), span.offset)
            return
        via_fp32 = dtype.itemsize == 2 and target.dtype.itemsize == 2 and dtype.is_floating_point
        flat = target.view(-1)
        count = flat.numel()
        for first in range(0, count, PIECE_ELEMENTS):
            n = min(PIECE_ELEMENTS, count - first)
            raw = self._view[: n * dtype.itemsize]
            _read_full(self._file, raw, span.offset + first * dtype.itemsize)
            source = self._bounce[: n * dtype.itemsize].view(dtype)
            if via_fp32:
                source = self._scratch[:n].copy_(source)
            flat[first : first + n].copy_(source)


def _read_full(file: Any, buffer: memoryview, offset: int) -> None:
    """Fill ``buffer`` from ``offset``; a file that ends early (cut while in use) is an error, not zeros."""
    done, size = 0, len(buffer)
    file.seek(offset)
    while done < size:
        n = file.readinto(buffer[done:])
        if n <= 0:
            raise OSError(f"the file ended {size - done} bytes early at offset {offset + done}: was it changed?")
        done += n


def _extent(span: Span) -> int:
    """Elements from the first to one past the last element a strided view touches."""
    if any(s == 0 for s in span.shape):
        return 0
    return 1 + sum((n - 1) * st for n, st in zip(span.shape, span.stride))


# --- tracing ------------------------------------------------------------------------------------


def weighted_components(folder: Path) -> dict[str, tuple[str, str]]:
    """name -> (library, class) of the components of ``folder``'s model_index.json that hold weights."""
    index = json.loads((Path(folder) / "model_index.json").read_text())
    out = {}
    for name, value in index.items():
        if name.startswith("_") or not isinstance(value, list) or len(value) != 2 or None in value:
            continue
        library, cls = value
        if library in ("diffusers", "transformers") and _is_model_class(library, cls):
            out[name] = (library, cls)
    return out


def _is_model_class(library: str, cls: str) -> bool:
    import importlib

    import torch

    obj = getattr(importlib.import_module(library), cls, None)
    return isinstance(obj, type) and issubclass(obj, torch.nn.Module)


def trace(
    mapped: MappedFile,
    folder: Path,
    names: Mapping[str, tuple[str, str]],
    dtype_name: str,
) -> tuple[LoadMap, dict[str, Any], dict[str, Any]]:
    """Convert each component of ``names`` with diffusers from views of ``mapped``; record where every
    weight lies. Returns (map, side tensors by "component/weight", the traced modules, which hold views
    of the map and are only for the caller to drop)."""
    import diffusers
    import torch
    from diffusers.loaders.single_file import load_single_file_sub_model

    header = mapped.header
    checkpoint = {}
    for key in header.tensors:
        try:
            checkpoint[key] = mapped.tensor(key)
        except KeyError:
            continue
    base = mapped.bytes.untyped_storage().data_ptr()
    sources: dict[tuple, list] = {}
    for tensor in checkpoint.values():
        if tensor.dim() >= 1:
            sources.setdefault((tensor.dtype, tuple(tensor.shape[1:])), []).append(tensor)
    lo, hi = header.data_start, header.file_size
    dtype = getattr(torch, dtype_name)
    loadmap = LoadMap(key=header_key(header), file_dtype=dtype_name, stamp=stamp_of(mapped.path) or (0, 0))
    extras: dict[str, Any] = {}
    modules = {}
    for name, (library, cls) in names.items():
        module = load_single_file_sub_model(
            library,
            cls,
            name,
            checkpoint,
            diffusers.pipelines,
            False,
            str(folder),
            local_files_only=True,
            torch_dtype=dtype,
        )
        modules[name] = module
        spans = {}
        for weight, t in module.state_dict().items():
            offset = t.data_ptr() - base
            shares = t.untyped_storage().data_ptr() == base and t.device.type == "cpu"
            span = Span(str(t.dtype).removeprefix("torch."), tuple(t.shape), tuple(t.stride()), offset)
            if not shares:  # a copy of the file's bytes (SD3's q/k/v: torch.cat of one chunk)?
                found = _find_copy(t, sources)
                if found is not None:
                    t, offset, shares = found, found.data_ptr() - base, True
                    span = Span(span.dtype, tuple(t.shape), tuple(t.stride()), offset)
            if shares and lo <= offset and offset + _extent(span) * t.element_size() <= hi:
                spans[weight] = span
            else:
                extras[f"{name}/{weight}"] = t.detach().contiguous()
                spans[weight] = Span(span.dtype, span.shape, contiguous_stride(span.shape), extra=True)
        loadmap.components[name] = spans
    loadmap.extra_bytes = sum(t.nbytes for t in extras.values())
    del checkpoint
    return loadmap, extras, modules


def _find_copy(t: Any, sources: Mapping[tuple, list]) -> Any:
    """A row block of a file tensor equal to ``t`` (the conversion copied it), as a view of the map; or None.

    Equal values make the view a correct source whatever the conversion did; the first elements are compared
    first, so only a likely match is read whole.
    """
    import torch

    if t.dim() < 1 or t.numel() < 1024 or t.device.type != "cpu":
        return None
    rows, head = t.shape[0], t.reshape(-1)[:16]
    for source in sources.get((t.dtype, tuple(t.shape[1:])), ()):
        if source.shape[0] % rows:
            continue
        for first in range(0, source.shape[0], rows):
            part = source[first : first + rows]
            if torch.equal(part.reshape(-1)[:16], head) and torch.equal(part, t):
                return part
    return None


def contiguous_stride(shape: tuple[int, ...]) -> tuple[int, ...]:
    stride, acc = [], 1
    for n in reversed(shape):
        stride.append(acc)
        acc *= max(n, 1)
    return tuple(reversed(stride))


def pays(loadmap: LoadMap, file_size: int) -> bool:
    return loadmap.extra_bytes <= MAX_EXTRA_SHARE * file_size


# --- storing ------------------------------------------------------------------------------------


def save(cache_dir: Path, loadmap: LoadMap, extras: Mapping[str, Any]) -> None:
    """Write the map and its side file (atomically: a reader sees the old pair or the new one)."""
    import safetensors.torch

    json_path, extra_path = _paths(cache_dir, loadmap.key)
    json_path.parent.mkdir(parents=True, exist_ok=True)
    if extras:
        tmp = extra_path.with_name(f".{extra_path.name}.{os.getpid()}.tmp")
        safetensors.torch.save_file(dict(extras), str(tmp))
        tmp.replace(extra_path)
    else:
        extra_path.unlink(missing_ok=True)
    write_json(json_path, loadmap)


def write_json(json_path: Path, loadmap: LoadMap) -> None:
    doc = {
        "version": MAP_VERSION,
        "key": loadmap.key,
        "file_dtype": loadmap.file_dtype,
        "stamp": list(loadmap.stamp),
        "extra_bytes": loadmap.extra_bytes,
        "finite": loadmap.finite,
        "components": {
            name: {w: [s.dtype, list(s.shape), list(s.stride), s.offset, s.extra] for w, s in spans.items()}
            for name, spans in loadmap.components.items()
        },
    }
    tmp = json_path.with_name(f".{json_path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(doc, separators=(",", ":")))
    tmp.replace(json_path)


def load(cache_dir: Path, header: SafetensorsHeader, path: Path) -> LoadMap | None:
    """The stored map for this file, or None (none yet, another version, or the file changed since)."""
    key = header_key(header)
    json_path, extra_path = _paths(cache_dir, key)
    try:
        doc = json.loads(json_path.read_text())
        if doc.get("version") != MAP_VERSION or doc.get("key") != key:
            return None
        loadmap = LoadMap(
            key=key,
            file_dtype=str(doc["file_dtype"]),
            stamp=(int(doc["stamp"][0]), int(doc["stamp"][1])),
            extra_bytes=int(doc.get("extra_bytes", 0)),
            finite={str(k): bool(v) for k, v in dict(doc.get("finite", {})).items()},
            components={
                name: {
                    w: Span(str(d), tuple(map(int, shape)), tuple(map(int, st)), int(off), bool(extra))
                    for w, (d, shape, st, off, extra) in spans.items()
                }
                for name, spans in doc["components"].items()
            },
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if loadmap.stamp != stamp_of(path):
        return None  # the values may differ: the side file is stale
    if loadmap.extra_bytes and not extra_path.is_file():
        return None
    return loadmap


def extra_file(cache_dir: Path, loadmap: LoadMap) -> Path | None:
    return _paths(cache_dir, loadmap.key)[1] if loadmap.extra_bytes else None


def json_file(cache_dir: Path, loadmap: LoadMap) -> Path:
    return _paths(cache_dir, loadmap.key)[0]
