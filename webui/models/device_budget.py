"""GPU memory for models kept on the device: what a load will hold there, what the device has, and the refusal.

A load's device footprint is estimated from the file alone, before a byte moves to the GPU: the weights of each
component at the compute precision (safetensors header, split by the family's single-file layout), of which
the memory plan decides how many stay on the device (``RESIDENCY``), plus a working margin for activations
and the decode. The device's free memory is read through a small protocol (``DeviceMemoryProbe``): in real use
``torch.cuda.mem_get_info``, in tests a fake. The manager (``webui.models.manager``) asks here and decides.

| placement mode (phase "placement") | on the device while a job runs  | between jobs (what leaving frees) |
|------------------------------------|---------------------------------|-----------------------------------|
| none                               | every component                 | every component                   |
| model_cpu_offload                  | the largest component           | nothing                           |
| group_offload                      | a streamed layer group + the VAE| the VAE (it is excluded)          |
| sequential_cpu_offload             | a streamed layer                | nothing                           |
| an extension's placement mode      | the largest component (assumed) | nothing                           |

``fp8_weights`` stores the denoiser (and T5) in one byte per value. Working memory: half the largest
component, at least ``MIN_WORKING_BYTES`` and at most ``MAX_WORKING_BYTES`` (SD 1.5 at 512 px: 1 GiB; SDXL
in fp16: 2.4 GiB).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from webui.models.ram_budget import (
    GIB,
    MIB,
    SKIP_PREFIXES,
    NotEnoughMemoryError,
    dtype_bytes,
    file_estimate,
    gib,
    tensor_bytes,
)

MIN_WORKING_BYTES = 1 * GIB
MAX_WORKING_BYTES = 4 * GIB
WORKING_SHARE = 0.5
STREAM_BYTES = 256 * MIB  # the layers an offload hook holds on the device at once (an upper bound)
DENOISERS = ("unet", "transformer")
FP8_COMPONENTS = (*DENOISERS, "text_encoder_3")
OTHER = "other"  # tensors of a single file outside every known part

# placement mode -> (while a job runs, between jobs); see the table above
RESIDENCY: Mapping[str, tuple[str, str]] = {
    "model_cpu_offload": ("largest", "none"),
    "group_offload": ("streamed+vae", "vae"),
    "sequential_cpu_offload": ("streamed", "none"),
}
_ALL = ("all", "all")
_UNKNOWN_PLACEMENT = ("largest", "none")
# lower-memory modes the refusal suggests (each alone, beside the plan's), in this order
SUGGESTED = ("model_cpu_offload", "fp8_weights", "sequential_cpu_offload")


class DeviceMemoryProbe(Protocol):
    """The device's memory in bytes; None when it cannot be read (no CUDA in this torch): nothing is budgeted then."""

    def free_bytes(self) -> int | None: ...

    def total_bytes(self) -> int | None: ...


class CudaMemory:
    """The CUDA device's memory: free as the driver says, plus what torch's allocator caches but no tensor uses."""

    def __init__(self, index: int | None = None) -> None:
        self.index = index

    def free_bytes(self) -> int | None:
        import torch

        if not torch.cuda.is_available():
            return None
        free, _total = torch.cuda.mem_get_info(self.index)
        cached = torch.cuda.memory_reserved(self.index) - torch.cuda.memory_allocated(self.index)
        return int(free + max(0, cached))

    def total_bytes(self) -> int | None:
        import torch

        return int(torch.cuda.mem_get_info(self.index)[1]) if torch.cuda.is_available() else None


@dataclass(frozen=True)
class DeviceFootprint:
    """What one model holds on the device: while a job runs (``resident`` + ``working``) and between jobs."""

    resident: int  # weights on the device while a job runs
    at_rest: int  # weights left there between jobs (what moving the model off or dropping it frees)
    working: int  # activations, the decode, allocator slack
    how: str  # in words, for the log and the refusal: "all weights", "the largest component (unet)" ...

    @property
    def needed(self) -> int:
        return self.resident + self.working


def component_bytes(
    entry: Any,
    dtype: Any,
    family: Any,
    text_encoder_files: Mapping[str, Path] = {},
    skip_components: Iterable[str] = (),
) -> dict[str, int]:
    """Pipeline component -> bytes once loaded in ``dtype``: ``entry``'s own parts and the text encoder files
    the loader reads beside it (``text_encoder_files``: slot -> file). ``skip_components``: left out (T5)."""
    per = dtype_bytes(dtype)
    skip = set(skip_components)
    parts = dict(getattr(family, "file_parts", None) or {})
    path = Path(entry.path)
    out: dict[str, int] = {}
    if path.is_dir():
        for folder in sorted(p for p in path.iterdir() if p.is_dir() and p.name not in skip):
            files = sorted(folder.glob("*.safetensors")) or sorted(folder.glob("*.bin"))
            if files:
                out[folder.name] = sum(file_estimate(f, per) for f in files)
    else:
        out = _single_file_parts(path, per, parts, skip, fallback=getattr(entry, "size", 0))
    components = getattr(getattr(entry, "record", None), "components", frozenset())
    for slot, te_path in text_encoder_files.items():
        part = parts.get(slot)
        name = part.component if part is not None else slot
        if slot in components or name in skip or name in out:
            continue
        try:
            out[name] = file_estimate(Path(te_path), per)
        except OSError:
            continue
    return out


def _single_file_parts(path: Path, per: int, parts: Mapping[str, Any], skip: set[str], fallback: int) -> dict[str, int]:
    from webui.models.safetensors_header import read_header

    if path.suffix != ".safetensors":  # a pickle: no header to split, its size as fp16 (as the RAM estimate)
        return {OTHER: int(path.stat().st_size * per / 2)}
    prefixes = sorted(((p.prefix, p.component) for p in parts.values()), key=lambda pc: -len(pc[0]))
    out: dict[str, int] = {}
    try:
        tensors = read_header(path).tensors
    except (OSError, ValueError):
        return {OTHER: int(fallback * per / 2)}
    for key, info in tensors.items():
        if key.startswith(SKIP_PREFIXES):
            continue
        name = next((c for prefix, c in prefixes if key.startswith(prefix)), OTHER)
        if name not in skip:
            out[name] = out.get(name, 0) + tensor_bytes(info, per)
    return out


def footprint(
    components: Mapping[str, int], mode_names: Iterable[str], dtype: Any, placement: Iterable[str] = ()
) -> DeviceFootprint:
    """The device footprint of a model with these component sizes under a plan's modes.

    ``placement``: the names among ``mode_names`` whose phase is "placement" (an extension's unknown one counts as
    keeping the largest component); the built-in offloads need not be listed there.
    """
    names = tuple(mode_names)
    sizes = dict(components)
    if "fp8_weights" in names:
        per = dtype_bytes(dtype)
        sizes = {c: (n // per if c in FP8_COMPONENTS else n) for c, n in sizes.items()}
    largest_name, largest = max(sizes.items(), key=lambda kv: kv[1], default=("", 0))
    working = int(min(MAX_WORKING_BYTES, max(MIN_WORKING_BYTES, WORKING_SHARE * largest)))
    # the last placement named decides: a plan has one, and a suggestion appended after it replaces it
    rule = next((RESIDENCY[n] for n in reversed(names) if n in RESIDENCY), None)
    if rule is None:
        rule = _UNKNOWN_PLACEMENT if any(n in names for n in placement) else _ALL
    run, rest = rule
    total = sum(sizes.values())
    vae = sizes.get("vae", 0)
    streamed = min(largest, STREAM_BYTES)
    resident = {"all": total, "largest": largest, "streamed": streamed, "streamed+vae": streamed + vae}[run]
    at_rest = {"all": total, "none": 0, "vae": vae}[rest]
    how = {
        "all": "all weights on the device",
        "largest": f"one component at a time, the largest is the {largest_name}",
        "streamed": "layers streamed to the device",
        "streamed+vae": "layers streamed, the VAE kept on the device",
    }[run]
    return DeviceFootprint(resident=resident, at_rest=at_rest, working=working, how=how)


def refusal_message(
    name: str,
    need: DeviceFootprint,
    free: int,
    reachable: int,
    precision: str,
    plan_label: str,
    suggestions: Mapping[str, int],
) -> str:
    """What a refused load tells the user: what it needs on the device, what there is, what to do.

    ``free``: free on the device now; ``reachable``: with this app's other models moved off it as well.
    ``suggestions``: a lower-memory mode's label -> what the load would need under it.
    """
    held = reachable - free
    have = f"{gib(free)} is free on the GPU" + (
        f" ({gib(reachable)} with the other models this app holds there moved off)" if held > 0 else ""
    )
    modes = ", ".join(f"{label} would need about {gib(n)}" for label, n in suggestions.items())
    lower = f"turn on a lower-memory mode in Settings > Memory ({modes}), " if modes else ""
    lower_precision = " or a lower precision (--precision fp16 or bf16)" if precision == "fp32" else ""
    return (
        f"not enough GPU memory to load {name}: it needs about {gib(need.needed)} on the device"
        f" ({gib(need.resident)} of {precision} weights, {need.how}, with {plan_label}, + {gib(need.working)}"
        f" working memory) and only {have}; nothing was moved or evicted and the active model stays loaded."
        f" To load it, {lower}use a smaller model{lower_precision}, or close other programs using the GPU"
    )


class NotEnoughDeviceMemoryError(NotEnoughMemoryError):
    """A load refused before any weight moved to the GPU; the message says what it needs, what is free, what to do."""
