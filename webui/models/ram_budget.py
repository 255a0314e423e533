"""Memory arithmetic for the RAM cache: what a checkpoint will take once loaded, what a parked one takes,
and what the machine can still give.

Estimates come from the file alone (safetensors header: numel per tensor x the bytes of the dtype it will
compute in), so that a load that cannot fit is refused before a byte is read. Measured sizes are the
parameter and buffer bytes of a loaded pipeline. The available-memory reading is a small protocol so that
tests (and other platforms) can give their own.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Protocol

log = logging.getLogger(__name__)

GIB = 1024**3
MIB = 1024**2
# The default budget: half of the machine's RAM minus 4 GiB for the OS, the app and the active model's
# working memory (activations, the decoded image). 24 GiB -> 8 GiB, 16 GiB -> 4 GiB, 8 GiB or less -> 0.
DEFAULT_FRACTION = 0.5
DEFAULT_HEADROOM_GIB = 4.0
# Kept free beyond a load's estimate: Python objects, allocator slack, tokenizers, the first activations.
SAFETY_MARGIN_BYTES = 512 * MIB
AUTO = -1.0  # the setting's value for "derived from the machine's RAM"

_DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "float64": 8}
# safetensors dtypes that are not weights cast to the compute dtype (kept as they are)
_KEEP_DTYPES = {"I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}
SKIP_PREFIXES = ("model_ema.",)  # EMA copies in original checkpoints are not loaded
T5_SLOT = "t5xxl"  # the text encoder slot left out without a tokenizer or by "Drop T5"


class MemoryProbe(Protocol):
    def available_bytes(self) -> int: ...

    def total_bytes(self) -> int: ...


class SystemMemory:
    """The machine's memory as psutil reads it (``available``: what can be used without swapping)."""

    def available_bytes(self) -> int:
        import psutil

        return int(psutil.virtual_memory().available)

    def total_bytes(self) -> int:
        import psutil

        return int(psutil.virtual_memory().total)


class NotEnoughMemoryError(ValueError):
    """A load refused before reading: the message says what it needs, what there is, and what to do.

    ``field``: the request field that named the model (the API's answer names it; a refiner load says so)."""

    def __init__(self, message: str, field: str = "sd_model_checkpoint") -> None:
        super().__init__(message)
        self.field = field


def default_budget_bytes(total_bytes: int) -> int:
    return max(0, int(total_bytes * DEFAULT_FRACTION - DEFAULT_HEADROOM_GIB * GIB))


def budget_bytes(gib: float, probe: MemoryProbe | None = None) -> int:
    """The cache budget in bytes for a ``ram_cache_gib`` value (``AUTO``/negative: from the machine's RAM)."""
    if gib is None or gib < 0:
        return default_budget_bytes((probe or SystemMemory()).total_bytes())
    return int(gib * GIB)


def gib(n: float) -> str:
    return f"{n / GIB:.2f} GiB" if abs(n) >= GIB / 10 else f"{n / GIB:.4f} GiB"  # small models still say something


def dtype_bytes(dtype: Any) -> int:
    name = str(dtype).replace("torch.", "")
    return _DTYPE_BYTES.get(name, 4)


def tensor_bytes(info: Any, compute_bytes: int) -> int:
    """Bytes of one header tensor once loaded: weights in the compute dtype, integer tensors as stored."""
    return info.numel * _KEEP_DTYPES.get(info.dtype, compute_bytes)


def _header_bytes(path: Path, compute_bytes: int, skip: tuple[str, ...] = SKIP_PREFIXES) -> int:
    from webui.models.safetensors_header import read_header

    total = 0
    for key, info in read_header(path).tensors.items():
        if key.startswith(skip):
            continue
        total += tensor_bytes(info, compute_bytes)
    return total


def file_estimate(
    path: Path, compute_bytes: int, size: int | None = None, skip: tuple[str, ...] = SKIP_PREFIXES
) -> int:
    """Bytes one weights file takes once loaded in a dtype of ``compute_bytes`` per value.

    safetensors: from its header. A .ckpt/.bin (pickle: no header to read safely): its size as if stored in
    fp16 (a conservative guess: an fp32 file is over-estimated 2x, never under-estimated).
    """
    path = Path(path)
    if path.is_dir():
        return folder_estimate(path, compute_bytes)
    if path.suffix == ".safetensors":
        try:
            return _header_bytes(path, compute_bytes, skip)
        except (OSError, ValueError) as exc:
            log.debug("no header estimate for %s: %s", path, exc)
    size = path.stat().st_size if size is None else size
    return int(size * compute_bytes / 2)


def folder_estimate(root: Path, compute_bytes: int) -> int:
    """A diffusers folder: its weights files (one format per component: safetensors first)."""
    total = 0
    for component in sorted(p for p in root.iterdir() if p.is_dir()):
        files = sorted(component.glob("*.safetensors")) or sorted(component.glob("*.bin"))
        total += sum(file_estimate(f, compute_bytes) for f in files)
    return total


def checkpoint_estimate(
    entry: Any, dtype: Any, text_encoder_files: Mapping[str, Path] = {}, with_t5: bool = True, families: Any = None
) -> int:
    """Bytes ``entry`` (a catalog entry) will take loaded in ``dtype``, text encoders loaded beside it included.

    ``text_encoder_files``: slot -> file for the encoders the checkpoint lacks (the loader reads those).
    ``with_t5``: False when the loader will leave T5 out (no tokenizer, the "Drop T5" mode); where T5 sits in
    a single file is asked of the family adapter (``families``: the registry; None: the built-in families).
    """
    per = dtype_bytes(dtype)
    skip = SKIP_PREFIXES if with_t5 else SKIP_PREFIXES + _slot_prefixes(entry, T5_SLOT, families)
    if not with_t5:
        text_encoder_files = {k: v for k, v in text_encoder_files.items() if k != T5_SLOT}
    try:
        total = file_estimate(entry.path, per, entry.size if entry.format == "ckpt" else None, skip)
    except OSError:
        total = int(entry.size * per / 2)
    components = getattr(entry.record, "components", frozenset())
    for slot, path in text_encoder_files.items():
        if slot in components:
            continue
        try:
            total += file_estimate(Path(path), per)
        except OSError:
            pass
    return total


def _slot_prefixes(entry: Any, slot: str, families: Any) -> tuple[str, ...]:
    """The key prefix of text encoder ``slot`` in ``entry``'s single file, from its family adapter (() if none)."""
    family_id = getattr(getattr(entry, "record", None), "family", None)
    if not family_id:
        return ()
    if families is None:
        from webui.families.registry import default_families

        families = default_families()
    try:
        part = families.get(family_id).file_parts.get(slot)
    except KeyError:
        return ()
    return (part.prefix,) if part is not None else ()


def _unique_tensors(modules: Iterable[Any]) -> Iterable[Any]:
    seen: set[int] = set()
    for module in modules:
        for tensor in [*module.parameters(), *module.buffers()]:
            if tensor.device.type == "meta":
                continue
            key = id(tensor)
            if key in seen:
                continue
            seen.add(key)
            yield tensor


def measured_bytes(pipeline: Any) -> int:
    """Parameter and buffer bytes of a loaded pipeline's modules (each tensor once)."""
    components = getattr(pipeline, "components", None) or {}
    modules = [m for m in components.values() if hasattr(m, "parameters") and hasattr(m, "buffers")]
    return sum(t.numel() * t.element_size() for t in _unique_tensors(modules))


def refusal_message(name: str, needed: int, available: int, budget: int) -> str:
    return (
        f"not enough memory to load {name}: it needs about {gib(needed)} (with a {gib(SAFETY_MARGIN_BYTES)}"
        f" margin) and only {gib(available)} can be had, even with the RAM cache emptied; nothing was"
        f" read or evicted and the active model stays loaded. Close other programs, lower --ram-cache-gib (now {gib(budget)}), use a"
        " smaller precision (--precision fp16 or bf16), or unload the model"
    )
