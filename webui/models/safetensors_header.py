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
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

# Bytes per element for each dtype the safetensors format defines.
DTYPE_SIZES: Mapping[str, float] = {
    "BOOL": 1,
    "U8": 1,
    "I8": 1,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
    "F8_E8M0": 1,
    "I16": 2,
    "U16": 2,
    "F16": 2,
    "BF16": 2,
    "I32": 4,
    "U32": 4,
    "F32": 4,
    "I64": 8,
    "U64": 8,
    "F64": 8,
    "F4": 0.5,
    "F6_E2M3": 0.75,
    "F6_E3M2": 0.75,
}
MAX_HEADER_BYTES = 100 * 1024 * 1024


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
    """Parse and validate the header; raise ``ModelFileError`` with a reason a user can act on."""
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
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ModelFileError(path, "safetensors header is not valid JSON; the file is damaged") from None
    if not isinstance(doc, dict):
        raise ModelFileError(path, "safetensors header is not a JSON object; the file is damaged")
    metadata = doc.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict):
        raise ModelFileError(path, "safetensors __metadata__ is not an object")
    data_start = 8 + n
    data_size = size - data_start
    tensors = {name: _tensor_info(path, name, entry, data_size) for name, entry in doc.items()}
    _check_no_overlap(path, tensors)
    return SafetensorsHeader(
        path=path,
        tensors=tensors,
        metadata={str(k): str(v) for k, v in metadata.items()},
        file_size=size,
        data_start=data_start,
    )


def _looks_like(head: bytes) -> str:
    if head[:2] == b"PK":
        return " (it looks like a zip archive: a PyTorch .ckpt/.pt saved with the wrong extension?)"
    if head[:1] == b"\x80":
        return " (it looks like a Python pickle: a .ckpt/.pt file with the wrong extension?)"
    if head[:1] in (b"<", b"{"):
        return " (it looks like text or HTML: a failed download saved as a model?)"
    return ""


def _tensor_info(path: Path, name: str, entry: object, data_size: int) -> TensorInfo:
    if not isinstance(entry, dict):
        raise ModelFileError(path, f"tensor {name!r} has a malformed header entry")
    dtype = entry.get("dtype")
    shape = entry.get("shape")
    offsets = entry.get("data_offsets")
    if dtype not in DTYPE_SIZES:
        raise ModelFileError(path, f"tensor {name!r} has unknown dtype {dtype!r}")
    if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise ModelFileError(path, f"tensor {name!r} has an invalid shape {shape!r}")
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(isinstance(o, int) for o in offsets)
        or not 0 <= offsets[0] <= offsets[1]
    ):
        raise ModelFileError(path, f"tensor {name!r} has invalid data offsets {offsets!r}")
    start, end = offsets
    if end > data_size:
        raise ModelFileError(
            path,
            f"tensor {name!r} ends at byte {end} but the data block has {data_size} bytes;"
            " the file is truncated: download it again",
        )
    expected = math.prod(shape) * DTYPE_SIZES[dtype]
    if end - start != expected:
        raise ModelFileError(
            path, f"tensor {name!r} claims {end - start} bytes but {dtype}{shape} needs {expected:g}"
        )
    return TensorInfo(dtype=dtype, shape=tuple(shape), start=start, end=end)


def _check_no_overlap(path: Path, tensors: Mapping[str, TensorInfo]) -> None:
    spans = sorted((t.start, t.end, name) for name, t in tensors.items() if t.end > t.start)
    for (s0, e0, n0), (s1, _e1, n1) in zip(spans, spans[1:]):
        if s1 < e0:
            raise ModelFileError(path, f"tensors {n0!r} and {n1!r} overlap in the file; it is damaged")
