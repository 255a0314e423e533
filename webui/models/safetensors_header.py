"""Read and check a safetensors header without reading any tensor data.

Layout: 8-byte little-endian header length N, N bytes of JSON
``{name: {"dtype", "shape", "data_offsets": [start, end]}, "__metadata__": {...}}``,
then the data block. Every claim the header makes about the data block is
checked against the file size, so a truncated or forged file is refused here,
before torch or safetensors ever map it.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

# Bits per element for each dtype the safetensors format defines (the library's own list).
DTYPE_BITS: Mapping[str, int] = {
    "BOOL": 8,
    "U8": 8,
    "I8": 8,
    "F8_E4M3": 8,
    "F8_E5M2": 8,
    "F8_E8M0": 8,
    "F8_E4M3FNUZ": 8,
    "F8_E5M2FNUZ": 8,
    "I16": 16,
    "U16": 16,
    "F16": 16,
    "BF16": 16,
    "I32": 32,
    "U32": 32,
    "F32": 32,
    "I64": 64,
    "U64": 64,
    "F64": 64,
    "C64": 64,
    "F4": 4,
    "F6_E2M3": 6,
    "F6_E3M2": 6,
}
# Bytes per element (fractions for the sub-byte formats).
DTYPE_SIZES: Mapping[str, float] = {name: bits / 8 for name, bits in DTYPE_BITS.items()}
# The safetensors library refuses larger headers (its MAX_HEADER_SIZE).
MAX_HEADER_BYTES = 100_000_000


class ModelFileError(ValueError):
    """A model file cannot be used; the message names the file and says why."""

    def __init__(self, path: Path | str, reason: str) -> None:
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"{self.path.name}: {reason}")


@dataclass(frozen=True)
class TensorInfo:
    dtype: str
    shape: tuple[int, ...]
    start: int
    end: int

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True)
class SafetensorsHeader:
    path: Path
    tensors: Mapping[str, TensorInfo]
    metadata: Mapping[str, str]
    file_size: int
    data_start: int

    def keys(self):
        return self.tensors.keys()

    def shape(self, key: str) -> tuple[int, ...] | None:
        info = self.tensors.get(key)
        return info.shape if info else None

    def has_prefix(self, prefix: str) -> bool:
        return any(k.startswith(prefix) for k in self.tensors)

    def with_prefix(self, prefix: str) -> dict[str, TensorInfo]:
        return {k: v for k, v in self.tensors.items() if k.startswith(prefix)}

    @property
    def dtypes(self) -> set[str]:
        return {t.dtype for t in self.tensors.values()}


def read_header(path: Path | str) -> SafetensorsHeader:
    """Parse and validate the header; raise ``ModelFileError`` with a reason a user can act on.

    A file passes only if the safetensors library would open it too: known dtypes, sizes that match
    the shapes, tensors that tile the data block exactly (no gap, no overlap, nothing left over) and
    ``__metadata__`` of strings. So a file the catalog lists as usable never fails later on its header.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise ModelFileError(path, f"file is {size} bytes, too small to be a safetensors file")
            (n,) = struct.unpack("<Q", head)
            if n == 0 or n > MAX_HEADER_BYTES or n > size - 8:
                hint = _looks_like(head)
                raise ModelFileError(
                    path,
                    f"not a valid safetensors file{hint} (header length {n} does not fit a {size}-byte file);"
                    " it may be truncated: download it again",
                )
            raw = f.read(n)
    except OSError as exc:
        raise ModelFileError(path, f"cannot read file: {exc.strerror or exc}") from None
    doc = _parse_json(path, raw)
    metadata = _metadata(path, doc.pop("__metadata__", None))
    data_start = 8 + n
    data_size = size - data_start
    tensors = {name: _tensor_info(path, name, entry, data_size) for name, entry in doc.items()}
    _check_layout(path, tensors, data_size)
    return SafetensorsHeader(path=path, tensors=tensors, metadata=metadata, file_size=size, data_start=data_start)


def _parse_json(path: Path, raw: bytes) -> dict:
    if not raw.lstrip(b" \t\r\n").startswith(b"{"):
        raise ModelFileError(path, "safetensors header is not a JSON object; the file is damaged")
    try:
        doc = json.loads(raw.decode("utf-8"), parse_constant=_no_constant)
    except (UnicodeDecodeError, ValueError, RecursionError):  # JSONDecodeError is a ValueError
        raise ModelFileError(path, "safetensors header is not valid JSON; the file is damaged") from None
    if not isinstance(doc, dict):
        raise ModelFileError(path, "safetensors header is not a JSON object; the file is damaged")
    return doc


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def _metadata(path: Path, value: object) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise ModelFileError(path, "safetensors __metadata__ must map names to strings; the file is damaged")
    return dict(value)


def _looks_like(head: bytes) -> str:
    if head[:2] == b"PK":
        return " (it looks like a zip archive: a PyTorch .ckpt/.pt saved with the wrong extension?)"
    if head[:1] == b"\x80":
        return " (it looks like a Python pickle: a .ckpt/.pt file with the wrong extension?)"
    if head[:1] in (b"<", b"{") and all(32 <= b < 127 or b in (9, 10, 13) for b in head):
        return " (it looks like text or HTML: a failed download saved as a model?)"
    return ""


def _is_count(value: object) -> bool:
    """A JSON integer >= 0 (``true`` is an int in Python, not in JSON)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _tensor_info(path: Path, name: str, entry: object, data_size: int) -> TensorInfo:
    if not isinstance(entry, dict):
        raise ModelFileError(path, f"tensor {name!r} has a malformed header entry")
    dtype = entry.get("dtype")
    shape = entry.get("shape")
    offsets = entry.get("data_offsets")
    if not isinstance(dtype, str) or dtype not in DTYPE_BITS:
        raise ModelFileError(path, f"tensor {name!r} has unknown dtype {_short(dtype)}")
    if not isinstance(shape, list) or not all(_is_count(d) for d in shape):
        raise ModelFileError(path, f"tensor {name!r} has an invalid shape {_short(shape)}")
    if not isinstance(offsets, list) or len(offsets) != 2 or not all(_is_count(o) for o in offsets):
        raise ModelFileError(path, f"tensor {name!r} has invalid data offsets {_short(offsets)}")
    start, end = offsets
    if start > end:
        raise ModelFileError(path, f"tensor {name!r} has invalid data offsets {_short(offsets)}")
    if end > data_size:
        raise ModelFileError(
            path,
            f"tensor {name!r} ends at byte {end} but the data block has {data_size} bytes;"
            " the file is truncated: download it again",
        )
    bits = math.prod(shape) * DTYPE_BITS[dtype]
    if bits % 8 or end - start != bits // 8:
        need = f"{bits / 8:g}" if bits < 10**15 else "far more"
        raise ModelFileError(path, f"tensor {name!r} claims {end - start} bytes but {dtype}{shape} needs {need}")
    return TensorInfo(dtype=dtype, shape=tuple(shape), start=start, end=end)


def _short(value: object, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _check_layout(path: Path, tensors: Mapping[str, TensorInfo], data_size: int) -> None:
    """The tensors must tile the data block: each starts where the previous ends, the last ends at its end."""
    spans = sorted((t.start, t.end, name) for name, t in tensors.items())
    position, previous = 0, None
    for start, end, name in spans:
        if start < position:
            raise ModelFileError(path, f"tensors {previous!r} and {name!r} overlap in the file; it is damaged")
        if start > position:
            raise ModelFileError(
                path, f"the data block has a gap of {start - position} bytes before tensor {name!r}; it is damaged"
            )
        position, previous = end, name
    if position != data_size:
        raise ModelFileError(
            path,
            f"the data block has {data_size - position} bytes that no tensor uses; the file is damaged"
            " (or was not written by a safetensors library)",
        )
