"""The built-in families, registered in one ``Registry``, and the look-ups that go through every family.

Adding a family is one module in this package and one line in ``BUILTIN`` (docs/ADDING_A_FAMILY.md).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from webui.families import sd2, sd3, sd15, sdxl, sdxl_refiner
from webui.families.base import NO_MATCH, FamilyAdapter
from webui.registry import Registry

# In registration order, which is also the order ties are broken in when two families recognise a file.
BUILTIN: tuple[FamilyAdapter, ...] = (
    sd15.FAMILY,
    sd2.FAMILY,
    sdxl.FAMILY,
    sdxl_refiner.FAMILY,
    sd3.SD3,
    sd3.SD35_MEDIUM,
    sd3.SD35_LARGE,
)
# What the page shows before any model is loaded.
FALLBACK_FAMILY = sd15.FAMILY.id


def default_families() -> Registry[FamilyAdapter]:
    """The built-in families (a fresh registry each call: no shared mutable state)."""
    reg: Registry[FamilyAdapter] = Registry("model family")
    for family in BUILTIN:
        reg.register(family.id, family)
    return reg


def _adapters(families: Registry[FamilyAdapter] | None) -> list[FamilyAdapter]:
    """The adapters of ``families``; None: the built-in ones (read from ``BUILTIN``, no registry is built)."""
    return [f for _, f in families.items()] if families is not None else list(BUILTIN)


def best_match(
    score: Callable[[FamilyAdapter], int], families: Registry[FamilyAdapter] | None = None
) -> FamilyAdapter | None:
    """The family that recognises something most specifically (first registered on a tie); None if none does."""
    best, best_score = None, NO_MATCH
    for family in _adapters(families):
        value = score(family)
        if value > best_score:
            best, best_score = family, value
    return best


def family_ids(where: Callable[[FamilyAdapter], object], families: Registry[FamilyAdapter] | None = None) -> tuple[str, ...]:
    """The ids of the families for which ``where(family)`` is true, in registration order."""
    return tuple(f.id for f in _adapters(families) if where(f))


def for_lora_group(group: str, families: Registry[FamilyAdapter] | None = None) -> FamilyAdapter | None:
    """The family whose LoRA group is ``group`` (the family LoRA detection named), or None."""
    return next((f for f in _adapters(families) if f.lora_group == group), None)


def lora_groups(families: Registry[FamilyAdapter] | None = None) -> set[str]:
    """Every LoRA group some family uses."""
    return {g for f in _adapters(families) for g in (f.lora_accepts or (f.lora_group,))}


def with_channels(channels: int, families: Iterable[FamilyAdapter] | None = None) -> list[FamilyAdapter]:
    return [f for f in (families if families is not None else BUILTIN) if f.latent_channels == channels]
