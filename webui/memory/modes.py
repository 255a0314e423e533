"""Memory modes: named strategies that trade speed (or a little image fidelity) for device memory.

A ``MemoryMode`` has two phases: ``load_kwargs`` (arguments for loading the model, e.g. leave
T5 out) and ``apply(pipe, ctx)`` (a call on the loaded pipeline, e.g. ``enable_model_cpu_offload``).
``undo(pipe, ctx)`` turns it off again; ``undo is None`` means diffusers cannot undo it and the
model must be reloaded (group offload, fp8 casting, drop T5).

Modes are data: the planner (``planner.py``) reads ``conflicts``, ``families``, ``devices``,
``strength`` and ``helps_on`` to refuse bad combinations, build the "auto" plan and pick the
next stronger mode after an out-of-memory error; ``apply.py`` runs them on a pipeline. The
built-ins below register through the ``webui_register_memory_modes(registry)`` hook exactly as
an extension's modes would (``BuiltinMemoryModes``).

Apply order is by ``phase`` (``PHASES``): load, weights, attention, vae, placement. Offload
modes come last because they take over where the weights live; after them nothing may call
``pipe.to(...)``.
"""

from __future__ import annotations

import inspect
import types
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from webui.hooks import hookimpl
from webui.registry import Registry, RegistryError

PHASES = ("load", "weights", "attention", "vae", "placement")


class MemoryModeError(ValueError):
    """A memory mode is invalid, or could not be turned on or off; the message names it."""


@dataclass(frozen=True)
class ApplyContext:
    """What a mode's ``apply``/``undo`` may use.

    ``device``: where the model computes ("cuda", "cpu", "mps"); for ``undo`` it is where the
    weights go back to. ``dtype``: the compute dtype (None = the denoiser's dtype). ``options``:
    per-mode settings, e.g. ``{"vae_tile_px": 512}``.
    """

    device: str
    dtype: Any = None
    family: str = ""
    options: Mapping[str, Any] = field(default_factory=dict)


ApplyFn = Callable[[Any, ApplyContext], "str | None"]


@dataclass(frozen=True, eq=False)
class MemoryMode:
    """One memory mode. ``apply``/``undo`` may return a note for the user (or None)."""

    name: str
    label: str
    # what it saves and what it costs, in a sentence or two (shown in Settings > Memory)
    description: str
    apply: ApplyFn
    # None: diffusers cannot undo it; changing it away reloads the model
    undo: ApplyFn | None = None
    phase: str = "placement"
    load_kwargs: Mapping[str, Any] = field(default_factory=dict)
    # other mode name -> why the two cannot be combined (checked in both directions)
    conflicts: Mapping[str, str] = field(default_factory=dict)
    changes_image: bool = False
    image_note: str = ""
    # family ids it applies to (empty: all); elsewhere the planner skips it with a note
    families: tuple[str, ...] = ()
    # devices it can run on (empty: all); elsewhere the planner refuses it
    devices: tuple[str, ...] = ()
    # devices where it lowers peak memory (empty: all); auto plans and OOM retries use it only there
    helps_on: tuple[str, ...] = ()
    # it lowers memory only for batches of at least this many images (VAE slicing: 2)
    min_batch: int = 1
    # order for the out-of-memory retry: higher saves more (and usually costs more); 0 = never picked
    strength: int = 0
    # rough memory saved, for people
    saves: str = ""
    # (device) -> None when usable there, else why not (a package is missing...); the planner skips it with the reason
    available: Callable[[str], str | None] | None = None

    @property
    def requires_cuda(self) -> bool:
        return self.devices == ("cuda",)

    @property
    def undoable(self) -> bool:
        return self.undo is not None

    def applies_to(self, family: str) -> bool:
        return not self.families or family in self.families

    def runs_on(self, device: str) -> bool:
        return not self.devices or device in self.devices

    def helps(self, device: str) -> bool:
        return not self.helps_on or device in self.helps_on

    def unavailable_reason(self, device: str) -> str | None:
        return self.available(device) if self.available is not None else None


def _callable_with_two(fn: Any) -> bool:
    if not callable(fn):
        return False
    try:
        inspect.signature(fn).bind(None, None)
    except TypeError:
        return False
    except ValueError:  # no signature (a builtin): trust it
        pass
    return True


def validate_mode(mode: Any) -> MemoryMode:
    """Check a mode (from the built-ins or an extension); raises ``MemoryModeError`` naming it."""
    if not isinstance(mode, MemoryMode):
        raise MemoryModeError(f"a memory mode must be a webui.memory.modes.MemoryMode, not {type(mode).__name__}")
    name = mode.name
    problems = []
    if not name or not name.replace("_", "").isalnum() or name != name.lower():
        problems.append("its name must be lower_case letters, digits and underscores")
    if mode.name in ("auto", "none"):
        problems.append("'auto' and 'none' are reserved names")
    if mode.phase not in PHASES:
        problems.append(f"phase {mode.phase!r} is not one of {', '.join(PHASES)}")
    for what, fn in (("apply", mode.apply), ("undo", mode.undo)):
        if fn is not None and not _callable_with_two(fn):
            problems.append(f"{what} must be a function (pipe, ctx)" + (" or None" if what == "undo" else ""))
    if not isinstance(mode.strength, int) or mode.strength < 0:
        problems.append("strength must be an int >= 0")
    if name in mode.conflicts:
        problems.append("it cannot conflict with itself")
    if mode.changes_image and not mode.image_note:
        problems.append("a mode that changes the image must say how (image_note)")
    if problems:
        raise MemoryModeError(f"memory mode {name!r} is invalid: {'; '.join(problems)}")
    return mode


class MemoryModeRegistry(Registry[MemoryMode]):
    """Registry of memory modes; ``register(mode)`` or ``register(name, mode)``; modes are validated."""

    def __init__(self) -> None:
        super().__init__("memory mode")

    def register(self, name_or_mode: str | MemoryMode, mode: MemoryMode | None = None) -> MemoryMode:  # type: ignore[override]
        if mode is None:
            mode = name_or_mode  # type: ignore[assignment]
            name = getattr(mode, "name", "")
        else:
            name = str(name_or_mode)
        validate_mode(mode)
        if name != mode.name:
            raise MemoryModeError(f"memory mode registered as {name!r} is named {mode.name!r}; use the same name")
        try:
            return super().register(name, mode)
        except RegistryError as exc:
            raise MemoryModeError(str(exc)) from None

    def modes(self) -> list[MemoryMode]:
        return [mode for _, mode in self.items()]


# --- the built-in modes ------------------------------------------------------------------------


_PLACEMENT = {
    "model_cpu_offload": "model CPU offload",
    "sequential_cpu_offload": "sequential CPU offload",
    "group_offload": "group offload",
}


def _placement_conflicts(name: str) -> dict[str, str]:
    """Every pair of offload modes conflicts: each decides where the weights live."""
    out = {}
    for other, label in _PLACEMENT.items():
        if other != name:
            pair = " and ".join(sorted((_PLACEMENT[name], label)))
            out[other] = f"{pair} both decide where the weights live; pick one"
    return out


def _families_with(mode_name: str) -> tuple[str, ...]:
    """The families whose adapter says the mode applies to them (``FamilyAdapter.memory_modes``)."""
    from webui.families.registry import family_ids

    return family_ids(lambda f: f.applies_memory_mode(mode_name))


def builtin_memory_modes() -> list[MemoryMode]:
    """The built-in modes, weakest first within each phase (fresh objects each call).

    What each one does to a pipeline lives in ``webui.memory.apply`` (imported here, not at import time);
    which families a family-specific mode applies to, the family adapters say.
    """
    from webui.memory import apply as ops

    return [
        MemoryMode(
            name="drop_t5",
            label="Drop T5 (SD3)",
            description="Loads SD3 without its T5-XXL text encoder (about 9.5 GB in fp16, 4.8 GB in fp8)."
            " Prompts are then read by the two CLIP encoders only.",
            phase="load",
            apply=ops.drop_t5,
            undo=None,
            load_kwargs=types.MappingProxyType({"text_encoder_3": None, "tokenizer_3": None}),
            changes_image=True,
            image_note="without T5 the model follows long prompts less closely and renders text worse",
            families=_families_with("drop_t5"),  # the families with a T5 encoder
            saves="the T5 encoder: ~9.5 GB (fp16)",
        ),
        MemoryMode(
            name="fp8_weights",
            label="fp8 weight storage",
            description="Stores the UNet/MMDiT (and T5) weights in 8-bit float and casts each layer up"
            " just before it runs: about half the weight memory, a little slower.",
            phase="weights",
            apply=ops.fp8_weights,
            undo=None,
            changes_image=True,
            image_note="fp8 storage rounds the weights: images differ slightly from full precision",
            saves="half of the denoiser's (and T5's) weight memory",
        ),
        MemoryMode(
            name="xformers",
            label="xformers attention",
            description="Memory-efficient attention kernels from the xformers package (CUDA only)."
            " PyTorch's built-in SDPA attention, used by default, saves the same memory.",
            phase="attention",
            apply=ops.xformers_on,
            undo=ops.xformers_off,
            conflicts={"attention_slicing": "xformers and attention slicing both replace the attention code; pick one"},
            available=ops.xformers_available,
            helps_on=("cuda",),
            image_note="same image up to float rounding (xformers kernels sum in another order than SDPA)",
            saves="the attention matrix, as SDPA does",
        ),
        MemoryMode(
            name="attention_slicing",
            label="Attention slicing",
            description="Computes attention a few heads at a time (UNet models). Only useful where PyTorch's"
            " fused SDPA attention is missing (Apple GPUs, old setups); on CUDA it is slower and saves nothing.",
            phase="attention",
            apply=ops.attention_slicing_on,
            undo=ops.attention_slicing_off,
            conflicts={"xformers": "xformers and attention slicing both replace the attention code; pick one"},
            families=_families_with("attention_slicing"),  # the UNet families
            helps_on=("mps",),
            strength=3,
            image_note="same image up to float rounding (the sliced kernel sums in another order)",
            saves="the attention matrix, split by heads",
        ),
        MemoryMode(
            name="vae_slicing",
            label="VAE slicing",
            description="Decodes a batch one image at a time: lower peak memory for batch sizes above 1,"
            " no effect on single images.",
            phase="vae",
            apply=ops.vae_slicing_on,
            undo=ops.vae_slicing_off,
            min_batch=2,
            strength=1,
            image_note="same image up to float rounding",
            saves="decode memory of all but one image of a batch",
        ),
        MemoryMode(
            name="vae_tiling",
            label="VAE tiling",
            description="Decodes (and encodes) large images in overlapping 512 px tiles: the VAE's peak memory"
            " stops growing with the image size. Slightly slower.",
            phase="vae",
            apply=ops.vae_tiling_on,
            undo=ops.vae_tiling_off,
            changes_image=True,
            image_note="VAE tiling blends overlapping tiles: images above 512 px differ slightly and can show faint seams",
            strength=2,
            saves="most of the VAE decode peak at large sizes, several GB at 1024x1024 and above",
        ),
        MemoryMode(
            name="model_cpu_offload",
            label="Model CPU offload",
            description="Keeps each model (text encoders, UNet/MMDiT, VAE) in system RAM and moves it to the GPU"
            " only while it runs: the GPU holds the largest one at a time. A little slower per image.",
            apply=ops.model_offload,
            undo=ops.remove_offload,
            conflicts=_placement_conflicts("model_cpu_offload"),
            helps_on=("cuda",),
            strength=4,
            saves="everything but the largest model: text encoders and VAE while denoising",
        ),
        MemoryMode(
            name="group_offload",
            label="Group offload",
            description="Keeps the weights in system RAM and streams them to the GPU layer by layer, overlapping"
            " transfer and compute: very low VRAM, faster than sequential offload, needs pinned RAM. The VAE stays.",
            apply=ops.group_offload,
            undo=None,
            conflicts=_placement_conflicts("group_offload"),
            helps_on=("cuda",),
            strength=5,
            saves="almost all weight memory",
        ),
        MemoryMode(
            name="sequential_cpu_offload",
            label="Sequential CPU offload",
            description="Moves every layer to the GPU only for its own computation: the lowest VRAM of all,"
            " and by far the slowest (several times slower).",
            apply=ops.sequential_offload,
            undo=ops.remove_offload,
            conflicts=_placement_conflicts("sequential_cpu_offload"),
            devices=("cuda",),
            helps_on=("cuda",),
            strength=6,
            saves="almost all weight memory",
        ),
    ]


def register_builtin_modes(registry: MemoryModeRegistry) -> None:
    for mode in builtin_memory_modes():
        registry.register(mode)


class BuiltinMemoryModes:
    """The built-in modes as a plugin: ``host.register_builtin("memory-modes", BuiltinMemoryModes())``."""

    @hookimpl
    def webui_register_memory_modes(self, registry: MemoryModeRegistry) -> None:
        register_builtin_modes(registry)
