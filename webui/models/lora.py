"""LoRA files: identify them from the safetensors header and check them against the loaded model.

* ``inspect_lora(header)`` reads only key names and shapes: format (kohya / diffusers / peft), the family group
  it was trained for, which components it targets, its rank and cross-attention width.
* ``check_compatible(info, pipe, family_spec)`` refuses a LoRA for another family, and one whose layer shapes
  differ from the loaded modules (a LoRA for a different-size model of the "same" family), before anything
  is attached, so nothing crashes mid-generation.

Applying LoRAs (cached named adapters, weights, verification) is ``webui.models.lora_manager.LoraManager``;
key layouts and the SD3 kohya conversion are in ``webui.models.lora_keys``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from webui.families.registry import for_lora_group, lora_groups
from webui.models import lora_keys as K
from webui.models.safetensors_header import ModelFileError, SafetensorsHeader

log = logging.getLogger(__name__)

FLUX = K.FLUX_GROUP  # a family this app does not run, told apart so that its LoRAs are refused by name
UNKNOWN = "unknown"


def group_label(group: str, unknown: str = "an unknown model") -> str:
    """A LoRA group's name for people: its family adapter's ``lora_label`` ("SD 1.5", "SDXL", "SD3" ...)."""
    if group == FLUX:
        return "Flux"
    family = for_lora_group(group)
    return (family.lora_label or family.label) if family is not None else unknown


def group_fits(group: str, family: Any) -> bool | None:
    """Whether LoRAs of ``group`` fit ``family`` (``FamilyAdapter.accepts_lora_group``); None for a group no
    family knows (an unknown LoRA: the layer shapes decide)."""
    if group == FLUX:
        return False
    if group not in lora_groups():
        return None
    return family.accepts_lora_group(group)


class LoraError(ModelFileError):
    """A LoRA cannot be used (here); the message says why and what to do."""


@dataclass(frozen=True)
class LoraInfo:
    path: Path
    name: str
    format: str  # "kohya" | "diffusers" | "peft"
    family_group: str  # a FamilyAdapter.lora_group, "flux" or "unknown"
    targets: frozenset[str]  # pipeline components: "unet"/"transformer", "text_encoder", "text_encoder_2", ...
    rank: int  # the largest rank of its layers
    context_dim: int | None  # width of the text context its cross-attention reads, if a layer tells it
    layers: tuple[K.LoraLayer, ...] = field(repr=False, default=())
    notes: tuple[str, ...] = ()
    # The file must be read and rewritten before diffusers gets it (conversion, alpha baking, prefixes).
    needs_conversion: bool = False

    @property
    def group_label(self) -> str:
        return group_label(self.family_group)


def _article(label: str) -> str:
    """"an" before "SD 1.5"/"SDXL" (read letter by letter) and vowels, else "a"."""
    acronym = label[:2].isupper()
    return "an" if label[:1].upper() in ("AEFHILMNORSX" if acronym else "AEIOU") else "a"


def inspect_lora(header: SafetensorsHeader) -> LoraInfo:
    """Identify a LoRA file from its header; ``LoraError`` if it is not a LoRA this app can apply."""
    path = header.path
    name = path.stem
    keys = list(header.keys())
    kind = K.lycoris_kind(keys)
    if kind:
        raise LoraError(
            path,
            f"LoRA '{name}' is a LyCORIS {kind} file, which this app cannot apply;"
            " use a standard LoRA (kohya LoRA/LoCon or diffusers format)",
        )
    if any(k.endswith((".dora_scale", ".lora_magnitude_vector")) for k in keys):
        raise LoraError(path, f"LoRA '{name}' is a DoRA LoRA, which this app cannot apply correctly yet")
    if any(k.endswith(".lora_mid.weight") for k in keys):
        raise LoraError(
            path, f"LoRA '{name}' uses LyCORIS CP/Tucker decomposition (lora_mid), which this app cannot apply"
        )
    try:
        fmt = K.key_format(keys)
    except K.KeyLayoutError as exc:
        raise LoraError(path, f"'{name}' is not a LoRA this app can read: {exc}") from None
    layers, problems = K.parse_layers({k: header.tensors[k].shape for k in keys}, fmt)
    if problems:
        shown = ", ".join(problems[:3])
        raise LoraError(path, f"LoRA '{name}' has keys that are not down/up pairs ({shown}); the file is damaged")
    if not layers:
        raise LoraError(path, f"'{name}' has no LoRA layers (no down/up weight pairs)")
    group = K.family_group(layers)
    transformer = K.group_denoiser(group) == "transformer"
    if transformer:
        layers = [_as_transformer(layer) for layer in layers]
    notes = []
    if any(k.startswith("bundle_emb.") for k in keys):
        notes.append("embedded textual-inversion embeddings are ignored")
    if any(layer.component == "text_encoder_3" for layer in layers):
        notes.append("T5 text-encoder layers are ignored (diffusers cannot attach LoRAs to T5)")
    needs = (
        (fmt == "kohya" and transformer)
        or fmt == "peft"
        or (fmt != "kohya" and any(k.endswith(".alpha") for k in keys))
        or any(k.startswith("bundle_emb.") for k in keys)
        or "text_encoder_3" in {layer.component for layer in layers}
    )
    return LoraInfo(
        path=path,
        name=name,
        format=fmt,
        family_group=group,
        targets=frozenset(layer.component for layer in layers),
        rank=max(layer.rank for layer in layers),
        context_dim=K.context_dim(layers),
        layers=tuple(layers),
        notes=tuple(notes),
        needs_conversion=bool(needs),
    )


def _as_transformer(layer: K.LoraLayer) -> K.LoraLayer:
    if layer.component != "unet":
        return layer
    return K.LoraLayer("transformer", layer.module, layer.in_features, layer.out_features, layer.rank, layer.conv)


# --- matching a LoRA's layers to the loaded modules ------------------------------------------------------

_PEFT_PARTS = {
    "base_layer",
    "lora_A",
    "lora_B",
    "lora_dropout",
    "lora_embedding_A",
    "lora_embedding_B",
    "lora_magnitude_vector",
}


def _features(module: Any) -> tuple[int, int] | None:
    import torch

    base = getattr(module, "base_layer", module)
    if isinstance(base, torch.nn.Linear):
        return base.in_features, base.out_features
    if isinstance(base, torch.nn.Conv2d):
        return base.in_channels, base.out_channels
    return None


class ModuleIndex:
    """Module paths (peft internals skipped) and kohya aliases of a pipeline's components, built lazily."""

    def __init__(self, pipe: Any) -> None:
        self.pipe = pipe
        self._modules: dict[str, dict[str, Any]] = {}
        self._aliases: dict[str, dict[str, str]] = {}

    def modules(self, component: str) -> dict[str, Any] | None:
        model = getattr(self.pipe, component, None)
        if model is None or not hasattr(model, "named_modules"):
            return None
        if component not in self._modules:
            self._modules[component] = {
                name: mod
                for name, mod in model.named_modules()
                if name and not _PEFT_PARTS.intersection(name.split(".")) and _features(mod)
            }
        return self._modules[component]

    def find(self, component: str, path: str) -> str | None:
        mods = self.modules(component) or {}
        for candidate in (path, path.removeprefix("text_model."), "text_model." + path):
            if candidate in mods:
                return candidate
        return None

    def aliases(self, component: str) -> dict[str, str]:
        """kohya layer name -> module path for one component."""
        if component not in self._aliases:
            mods = self.modules(component) or {}
            config = getattr(self.pipe, component).config if component == "unet" else None
            self._aliases[component] = K.kohya_aliases(component, mods, dict(config) if config else None)
        return self._aliases[component]

    def kohya(self, component: str, name: str) -> str | None:
        return self.aliases(component).get(name)


@dataclass
class LayerMatch:
    # component -> number of model modules that will carry the LoRA
    matched: dict[str, int] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)
    absent_components: set[str] = field(default_factory=set)


def match_layers(info: LoraInfo, pipe: Any, index: ModuleIndex | None = None) -> LayerMatch:
    index = index or ModuleIndex(pipe)
    result = LayerMatch()
    for layer in info.layers:
        if index.modules(layer.component) is None:
            result.absent_components.add(layer.component)
            continue
        for path, want_in, want_out in _layer_targets(info, layer, index):
            if path is None:
                result.missing.append(layer.module)
                continue
            have = _features(index.modules(layer.component)[path])
            if have != (want_in, want_out):
                result.mismatched.append(
                    f"{layer.component}.{path}: LoRA {want_in}->{want_out}, model {have[0]}->{have[1]}"
                )
                continue
            result.matched[layer.component] = result.matched.get(layer.component, 0) + 1
    return result


def _layer_targets(info: LoraInfo, layer: K.LoraLayer, index: ModuleIndex):
    """(module path or None, expected in, expected out) for each model module one LoRA layer patches."""
    if info.format != "kohya":
        yield index.find(layer.component, layer.module), layer.in_features, layer.out_features
        return
    if layer.component == "transformer":
        family = for_lora_group(info.family_group)
        target = family.kohya_lora_targets(layer.module, layer.in_features, layer.out_features) if family else None
        if target is None:
            yield None, 0, 0
            return
        paths, out = target
        for path in paths:
            yield index.find("transformer", path), layer.in_features, out
        return
    yield index.kohya(layer.component, layer.module), layer.in_features, layer.out_features


def check_compatible(info: LoraInfo, pipe: Any, family_spec: Any) -> None:
    """Raise ``LoraError`` unless the LoRA fits the loaded pipeline (family group, then every layer's shape)."""
    model_label = family_spec.label
    if info.family_group == FLUX:
        raise LoraError(info.path, f"LoRA '{info.name}' is for Flux, which this app does not run")
    if group_fits(info.family_group, family_spec) is False:
        raise LoraError(
            info.path,
            f"LoRA '{info.name}' is for {info.group_label} but the loaded model is {model_label};"
            f" pick {_article(model_label)} {model_label} LoRA or switch model",
        )
    match = match_layers(info, pipe)
    if match.mismatched:
        shown = "; ".join(match.mismatched[:3])
        raise LoraError(
            info.path,
            f"LoRA '{info.name}' does not fit the loaded {model_label} model: {len(match.mismatched)} layer(s)"
            f" have other sizes ({shown}); it was made for a different model",
        )
    if not match.matched:
        raise LoraError(
            info.path,
            f"LoRA '{info.name}' does not fit the loaded {model_label} model: none of its {len(info.layers)}"
            " layers exist in it; it was made for a different model",
        )
    if match.missing:
        log.warning(
            "LoRA %r: %d of its layers have no counterpart in the loaded model and are skipped (e.g. %s)",
            info.name,
            len(match.missing),
            match.missing[0],
        )
