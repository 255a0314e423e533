"""Full-size-shaped checkpoints for memory tests: the real tensor names and shapes, zero bytes, no RAM.

The tensor list comes from the real configs (``scripts/bench_models.py``'s builders, instantiated on the
meta device: no weights are allocated) converted to the original single-file layout
(``webui.models.ldm_export``). The file is written as a safetensors header followed by a sparse hole the
size of the data block: a 2 GiB SD 1.5 file takes milliseconds to write and no disk blocks, reads back as
zeros (valid fp16 values), and the catalog identifies it as the real family from its keys and shapes.
"""

from __future__ import annotations

import importlib.util
import json
import math
import struct
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
_SAFETENSORS_DTYPES = {"float16": ("F16", 2), "bfloat16": ("BF16", 2), "float32": ("F32", 4)}


def _bench_models():
    spec = importlib.util.spec_from_file_location("_bench_models", ROOT / "scripts" / "bench_models.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def full_size_shapes(family: str) -> dict[str, tuple[int, ...]]:
    """Original-layout tensor name -> shape of a full-size checkpoint of ``family`` (sd15, sdxl, sd3)."""
    import torch

    from webui.models.ldm_export import components_to_original

    shapes: dict[str, tuple[int, ...]] = {}
    for part, build in _bench_models()._parts(family):
        with torch.device("meta"):
            module = build()
        state = components_to_original(family, {part: module})
        shapes.update({key: tuple(t.shape) for key, t in state.items()})
    return shapes


def write_shaped_checkpoint(path: Path, shapes: dict[str, tuple[int, ...]], dtype: str = "float16") -> int:
    """Write a zero-filled (sparse) safetensors file with these tensors; returns its data bytes."""
    code, size = _SAFETENSORS_DTYPES[dtype]
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for key in sorted(shapes):
        nbytes = math.prod(shapes[key]) * size
        header[key] = {"dtype": code, "shape": list(shapes[key]), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # the data block starts 8-byte aligned
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        f.truncate(8 + len(blob) + offset)  # a hole: zeros without writing them
    return offset
