"""The memory planner: which modes to use, refused combinations, the auto plan and out-of-memory advice.

Nothing here touches torch: plans are made from mode data, the family and the device name, so
the UI can validate a choice before any model is loaded.

Rules of ``plan(names, ...)`` (a user's or an extension's choice):
- an unknown name raises ``PlanError`` listing the valid ones; "auto" is ``auto_plan``'s job;
- a mode that cannot run on this device (sequential offload on a CPU) raises: the device is fixed
  for the app's life, so the setting is wrong and must be changed;
- a mode for other families (drop T5 on SD1.5, attention slicing on SD3) or not available here
  (xformers without the package) is **skipped with a note**: settings are global and models
  change, so an SD3 setting must not break the next SD1.5 job;
- two conflicting modes raise ``PlanError`` with every conflict's reason.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from webui.memory.modes import PHASES, MemoryMode, MemoryModeRegistry
from webui.registry import RegistryError

GIB = 1 << 30
# T5-XXL encoder: ~4.76e9 parameters, 9.5 GB in fp16 (for auto_plan's t5_bytes before SD3 is loaded)
T5_XXL_PARAMS = 4_762_000_000

# The auto plan (CUDA only), with r = weight bytes / free VRAM bytes. "Largest" is the biggest
# single model (UNet / MMDiT / T5); when unknown it is taken as 80% of the weights (SD1.5 UNet
# 1.7 of 2.1 GB, SDXL UNet 5.1 of 6.9 GB, SD3 MMDiT 4.2 of 5.9 GB without T5).
#
# | condition                                      | modes                                   | why                                   |
# |------------------------------------------------|-----------------------------------------|---------------------------------------|
# | device is not CUDA                             | none                                    | weights already live in system RAM    |
# | SD3 and T5 alone > TIGHT * free                | drop_t5, then the rows below without it | not even offload could hold T5 (9.5GB)|
# | r <= ROOMY                                     | none                                    | fits with room for activations/decode |
# | r <= TIGHT                                     | vae_slicing, vae_tiling                 | weights fit, the decode peak may not  |
# | r <= OVER and largest <= TIGHT * free          | model_cpu_offload + the VAE modes       | one model at a time fits              |
# | free >= GROUP_MIN_FREE                         | group_offload + the VAE modes           | streams layers; low VRAM, fast        |
# | otherwise                                      | sequential_cpu_offload + the VAE modes  | lowest VRAM, slowest                  |
ROOMY = 0.5
TIGHT = 0.7
OVER = 1.3
GROUP_MIN_FREE = 2 * GIB
LARGEST_SHARE = 0.8
VAE_MODES = ("vae_slicing", "vae_tiling")


class PlanError(ValueError):
    """A memory plan was refused; the message says why and what to do."""


@dataclass(frozen=True)
class MemoryPlan:
    """Validated modes in apply order, plus notes for the user (skipped modes, auto reasoning)."""

    modes: tuple[MemoryMode, ...] = ()
    notes: tuple[str, ...] = ()
    auto: bool = False

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(m.name for m in self.modes)

    def has(self, name: str) -> bool:
        return name in self.names

    def describe(self) -> str:
        return ", ".join(m.label for m in self.modes) or "no memory mode"

    @property
    def load_kwargs(self) -> dict[str, Any]:
        """Arguments for loading the model (e.g. text_encoder_3=None); the loader must honour them."""
        out: dict[str, Any] = {}
        for mode in self.modes:
            out.update(mode.load_kwargs)
        return out

    @property
    def changes_image(self) -> bool:
        return any(m.changes_image for m in self.modes)

    @property
    def image_notes(self) -> list[str]:
        return [f"{m.label}: {m.image_note}" for m in self.modes if m.changes_image]

    @property
    def manages_placement(self) -> bool:
        """True when an offload mode decides where the weights live (never call pipe.to then)."""
        return any(m.phase == "placement" for m in self.modes)

    @property
    def manages_attention(self) -> bool:
        """True when a mode chose the attention kernels (xformers, slicing, an extension's)."""
        return any(m.phase == "attention" for m in self.modes)

    def load_device(self, device: str) -> str:
        """Where to load the weights: the CPU when a mode must see them before they reach the GPU."""
        if any(m.phase in ("weights", "placement") for m in self.modes):
            return "cpu"
        return device


NO_PLAN = MemoryPlan()


def family_id(family: Any) -> str:
    return str(getattr(family, "id", family) or "")


def _names(names: str | Iterable[str] | None) -> list[str]:
    if names is None:
        return []
    if isinstance(names, str):
        names = names.split(",")
    out: list[str] = []
    for name in names:
        name = str(name).strip()
        if name and name.lower() != "none" and name not in out:
            out.append(name)
    return out


def _order(mode: MemoryMode) -> tuple[int, int, str]:
    return (PHASES.index(mode.phase), mode.strength, mode.name)


def conflicts_between(a: MemoryMode, b: MemoryMode) -> str | None:
    """Why ``a`` and ``b`` cannot be combined (either may declare it), or None."""
    return a.conflicts.get(b.name) or b.conflicts.get(a.name)


def plan(
    names: str | Iterable[str] | None,
    registry: MemoryModeRegistry,
    family: Any,
    device: str,
    *,
    notes: Iterable[str] = (),
    auto: bool = False,
) -> MemoryPlan:
    """Validate a choice of modes for a family and device; raises ``PlanError`` (see the module doc)."""
    fam = family_id(family)
    kept: list[MemoryMode] = []
    out_notes = list(notes)
    for name in _names(names):
        if name == "auto":
            raise PlanError("'auto' is a plan, not a mode: use auto_plan() to work it out")
        try:
            mode = registry.get(name)
        except RegistryError as exc:
            raise PlanError(str(exc)) from None
        if not mode.runs_on(device):
            where = " or ".join(mode.devices)
            raise PlanError(
                f"'{mode.label}' needs a {where.upper()} device and this app computes on {device}"
                f" (where the weights already live in system RAM); turn it off in Settings > Memory"
            )
        if not mode.applies_to(fam):
            out_notes.append(f"'{mode.label}' skipped: it applies to {', '.join(mode.families)} models, not {fam}")
            continue
        reason = mode.unavailable_reason(device)
        if reason:
            out_notes.append(f"'{mode.label}' skipped: {reason}")
            continue
        kept.append(mode)
    problems = []
    for i, a in enumerate(kept):
        for b in kept[i + 1 :]:
            why = conflicts_between(a, b)
            if why:
                problems.append(f"'{a.label}' and '{b.label}' cannot be combined: {why}")
    if problems:
        raise PlanError("; ".join(problems))
    return MemoryPlan(tuple(sorted(kept, key=_order)), tuple(out_notes), auto)


def _gb(n: float) -> str:
    return f"{n / 1e9:.1f} GB"


def auto_plan(
    free_vram_bytes: int | None,
    model_bytes: int,
    family: Any,
    device: str,
    registry: MemoryModeRegistry,
    *,
    largest_bytes: int | None = None,
    t5_bytes: int = 0,
) -> MemoryPlan:
    """Pick modes from free VRAM and the model's weight size (table above); never raises for missing modes."""
    if device != "cuda" or not free_vram_bytes:
        return MemoryPlan((), (f"auto: nothing to do on {device}",), auto=True)
    free = float(free_vram_bytes)
    weights = float(model_bytes)
    largest = float(largest_bytes) if largest_bytes else LARGEST_SHARE * weights
    chosen: list[str] = []
    why = f"auto: {_gb(weights)} of weights, {_gb(free)} free VRAM"
    if t5_bytes and t5_bytes > TIGHT * free and registry_has(registry, "drop_t5", family):
        chosen.append("drop_t5")
        weights -= t5_bytes
        if largest >= t5_bytes:  # T5 was the largest model
            largest = LARGEST_SHARE * weights
        why += f"; T5 alone is {_gb(t5_bytes)}, without it {_gb(weights)}"
    ratio = weights / free
    if ratio <= ROOMY:
        pass
    elif ratio <= TIGHT:
        chosen += VAE_MODES
    elif ratio <= OVER and largest <= TIGHT * free:
        chosen += ["model_cpu_offload", *VAE_MODES]
    elif free >= GROUP_MIN_FREE:
        chosen += ["group_offload", *VAE_MODES]
    else:
        chosen += ["sequential_cpu_offload", *VAE_MODES]
    chosen = [n for n in chosen if registry_has(registry, n, family)]
    result = plan(chosen, registry, family, device, auto=True)
    return MemoryPlan(result.modes, (f"{why} -> {result.describe()}", *result.notes), auto=True)


def registry_has(registry: MemoryModeRegistry, name: str, family: Any) -> bool:
    return name in registry and registry.get(name).applies_to(family_id(family))


# --- out of memory -----------------------------------------------------------------------------


def is_out_of_memory(exc: BaseException) -> bool:
    """A CUDA (or MPS/CPU allocator) out-of-memory error."""
    text = str(exc).lower()
    return type(exc).__name__ == "OutOfMemoryError" or "out of memory" in text or "can't allocate memory" in text


def next_stronger(
    current: MemoryPlan, registry: MemoryModeRegistry, family: Any, device: str, *, batch_size: int = 1
) -> MemoryMode | None:
    """The weakest mode stronger than every mode of ``current`` that would help here, or None.

    Order (``strength``): vae_slicing < vae_tiling < attention_slicing < model_cpu_offload <
    group_offload < sequential_cpu_offload. Skipped: modes for other families or devices, modes
    that do not lower memory on this device (``helps_on``) or for this batch size (``min_batch``:
    VAE slicing only splits batches), and unavailable ones.
    """
    fam = family_id(family)
    floor = max((m.strength for m in current.modes), default=0)
    candidates = [
        m
        for m in registry.modes()
        if m.strength > floor
        and m.name not in current.names
        and m.applies_to(fam)
        and m.runs_on(device)
        and m.helps(device)
        and m.unavailable_reason(device) is None
        and batch_size >= m.min_batch
    ]
    return min(candidates, key=lambda m: (m.strength, m.name), default=None)


def escalate(
    current: MemoryPlan, registry: MemoryModeRegistry, family: Any, device: str, *, batch_size: int = 1
) -> MemoryPlan | None:
    """``current`` plus the next stronger mode (replacing the modes it conflicts with), or None."""
    mode = next_stronger(current, registry, family, device, batch_size=batch_size)
    if mode is None:
        return None
    kept = [m.name for m in current.modes if not conflicts_between(m, mode)]
    note = f"out of memory: retried with '{mode.label}'"
    return plan([*kept, mode.name], registry, family, device, notes=(*current.notes, note), auto=current.auto)


def oom_message(
    current: MemoryPlan,
    registry: MemoryModeRegistry,
    family: Any,
    device: str,
    *,
    width: int = 0,
    height: int = 0,
    batch_size: int = 1,
) -> str:
    """What to tell the user after an out-of-memory error: the mode that would help, or what else to do."""
    where = f" at {width}x{height}" if width and height else ""
    if batch_size > 1:
        where += f" with a batch of {batch_size}"
    using = f" (memory modes: {current.describe()})" if current.modes else ""
    memory = "GPU memory" if device == "cuda" else "memory"
    mode = next_stronger(current, registry, family, device, batch_size=batch_size)
    if mode is None:
        return (
            f"Out of {memory}{where}{using}, and no stronger memory mode is left. Use a smaller size or batch"
            " size, or a smaller model; the app keeps running."
        )
    cost = f" Note: {mode.image_note}." if mode.changes_image else ""
    return (
        f"Out of {memory}{where}{using}. Turn on '{mode.label}' in Settings > Memory (saves {mode.saves}),"
        f" or use a smaller size or batch size; the app keeps running.{cost}"
    )
