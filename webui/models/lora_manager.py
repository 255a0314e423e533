"""Apply LoRAs to a loaded pipeline as cached, named peft adapters.

``LoraManager.apply(pipe, family_spec, [(info, weight), ...])`` makes exactly those LoRAs active:

* each file is attached once as a named adapter (name from the file, unique per path) and stays cached
  across jobs (bounded; the least recently used ones that are not requested are deleted first);
* weights change with ``set_adapters`` only: the checkpoint is never reloaded and its base weights are
  never modified (nothing is fused), so an empty request (``disable_lora``) or ``clear`` gives the base
  model's exact output back;
* every load is verified with ``pipe.get_list_adapters()``: diffusers silently ignores layouts it does not
  know (SD3 kohya files, which are therefore converted here first), and that becomes a ``LoraError``.

One worker thread owns the device and calls this; the manager is not thread-safe. Loading a LoRA while an
offload mode is on goes through diffusers' temporary removal of the hooks: re-apply the memory mode after.
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence
from weakref import WeakKeyDictionary

from webui.families.registry import for_lora_group
from webui.models import lora_keys as K
from webui.models.lora import LoraError, LoraInfo, ModuleIndex, check_compatible, match_layers

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class LoraWeight:
    """Strength for the text encoders and the denoiser (A1111 ``<lora:name:te:unet>``)."""

    te: float
    denoiser: float

    @classmethod
    def of(cls, weight: float | "LoraWeight") -> "LoraWeight":
        return weight if isinstance(weight, LoraWeight) else cls(float(weight), float(weight))

    @property
    def is_zero(self) -> bool:
        return self.te == 0 and self.denoiser == 0


@dataclass(frozen=True)
class AppliedLoras:
    """What ``LoraManager.apply`` did: active (LoRA name, adapter name, weight), newly loaded names, notes."""

    active: tuple[tuple[str, str, LoraWeight], ...]
    loaded: tuple[str, ...]
    evicted: tuple[str, ...]
    notes: tuple[str, ...]
    seconds: float


@dataclass
class _Adapter:
    info: LoraInfo
    stamp: tuple[int, int]
    components: tuple[str, ...]


def adapter_name(info: LoraInfo) -> str:
    """A peft-safe adapter name (no dots) that is unique per file path."""
    stem = re.sub(r"[^A-Za-z0-9_]", "_", info.name)[:40] or "lora"
    digest = hashlib.sha1(str(info.path.resolve()).encode("utf-8")).hexdigest()[:8]
    return f"{stem}_{digest}"


def _stamp(path: Path) -> tuple[int, int]:
    try:
        st = path.stat()
    except OSError as exc:
        raise LoraError(path, f"cannot read the LoRA file: {exc.strerror or exc}") from None
    return st.st_mtime_ns, st.st_size


def _denoiser(pipe: Any) -> Any:
    for name in K.DENOISERS:
        model = getattr(pipe, name, None)
        if model is not None:
            return model
    raise LoraError("pipeline", "the loaded pipeline has no UNet or transformer to attach LoRAs to")


def _adapters_by_component(pipe: Any) -> dict[str, list[str]]:
    try:
        return {c: list(names) for c, names in pipe.get_list_adapters().items()}
    except ValueError:  # peft missing
        return {}


class LoraManager:
    """Attaches LoRAs to loaded pipelines as named adapters and keeps them across jobs.

    State is per denoiser module (the adapters live on the modules, which task pipelines derived from the
    same checkpoint share) and dies with it. At most ``max_cached`` adapters stay attached; the least
    recently used ones not requested are deleted first.
    """

    def __init__(self, max_cached: int = 8) -> None:
        if max_cached < 0:
            raise ValueError("max_cached must be >= 0")
        self.max_cached = max_cached
        self._state: WeakKeyDictionary[Any, OrderedDict[str, _Adapter]] = WeakKeyDictionary()

    def cached(self, pipe: Any) -> list[str]:
        """Adapter names attached to this pipeline, least recently used first."""
        return list(self._reconciled(pipe))

    def apply(
        self,
        pipe: Any,
        family_spec: Any,
        requests: Sequence[tuple[LoraInfo, float | LoraWeight]],
    ) -> AppliedLoras:
        """Make exactly ``requests`` active with their weights; load what is missing, never reload the model."""
        t0 = time.perf_counter()
        state = self._reconciled(pipe)
        wanted = _merge_requests(requests)
        for info, _w in wanted.values():
            check_compatible(info, pipe, family_spec)
        loaded, notes = [], []
        try:
            for name, (info, _w) in wanted.items():
                if self._ensure_loaded(pipe, state, name, info):
                    loaded.append(info.name)
                    notes.extend(f"{info.name}: {n}" for n in info.notes)
                state.move_to_end(name)
        except Exception:
            # diffusers activates each newly loaded adapter; leave the pipeline in a known state: no LoRA.
            self._activate(pipe, state, [])
            raise
        evicted = self._evict(pipe, state, keep=set(wanted))
        # Sorted: the same set of LoRAs gives bit-identical images whatever order the prompt names them in.
        active = sorted((name, info, w) for name, (info, w) in wanted.items() if not w.is_zero)
        self._activate(pipe, state, active)
        return AppliedLoras(
            active=tuple((info.name, name, w) for name, info, w in active),
            loaded=tuple(loaded),
            evicted=tuple(evicted),
            notes=tuple(notes),
            seconds=time.perf_counter() - t0,
        )

    def clear(self, pipe: Any) -> None:
        """Remove every adapter this manager attached and the LoRA layers themselves."""
        state = self._reconciled(pipe)
        if state:
            pipe.delete_adapters(list(state))
            state.clear()
        if not any(_adapters_by_component(pipe).values()):
            pipe.unload_lora_weights()

    # -- internals --

    def _reconciled(self, pipe: Any) -> OrderedDict[str, _Adapter]:
        state = self._state.setdefault(_denoiser(pipe), OrderedDict())
        present = {n for names in _adapters_by_component(pipe).values() for n in names}
        for name in [n for n in state if n not in present]:
            del state[name]  # deleted behind our back (e.g. unload_lora_weights)
        return state

    def _ensure_loaded(self, pipe: Any, state: OrderedDict[str, _Adapter], name: str, info: LoraInfo) -> bool:
        stamp = _stamp(info.path)
        entry = state.get(name)
        if entry is not None and entry.stamp == stamp:
            return False
        if entry is not None:  # the file changed on disk
            pipe.delete_adapters(name)
            del state[name]
        components = _load_adapter(pipe, info, name)
        state[name] = _Adapter(info, stamp, components)
        return True

    def _evict(self, pipe: Any, state: OrderedDict[str, _Adapter], keep: set[str]) -> list[str]:
        victims = [n for n in state if n not in keep][: max(0, len(state) - self.max_cached)]
        names = [state[n].info.name for n in victims]
        if victims:
            pipe.delete_adapters(victims)
            for n in victims:
                del state[n]
        if not state and not any(_adapters_by_component(pipe).values()) and any(
            _has_lora_layers(m) for m in _lora_components(pipe)
        ):
            pipe.unload_lora_weights()  # no adapters left: put the plain modules back
        return names

    def _activate(self, pipe: Any, state: Mapping[str, _Adapter], active: list) -> None:
        if not state:
            return
        if not active:
            pipe.disable_lora()
            return
        pipe.enable_lora()
        names = [name for name, _info, _w in active]
        weights = [_component_weights(state[name].components, w) for name, _info, w in active]
        pipe.set_adapters(names, adapter_weights=weights)


def _merge_requests(requests: Iterable[tuple[LoraInfo, float | LoraWeight]]) -> dict[str, tuple[LoraInfo, LoraWeight]]:
    """adapter name -> (info, weight); the same file asked for twice adds up its weights (as in A1111)."""
    out: dict[str, tuple[LoraInfo, LoraWeight]] = {}
    for info, weight in requests:
        w = LoraWeight.of(weight)
        name = adapter_name(info)
        if name in out:
            old = out[name][1]
            w = LoraWeight(old.te + w.te, old.denoiser + w.denoiser)
        out[name] = (info, w)
    return out


def _component_weights(components: Sequence[str], w: LoraWeight) -> float | dict[str, float]:
    if w.te == w.denoiser:
        return w.denoiser
    return {c: (w.te if c in K.TEXT_ENCODERS else w.denoiser) for c in components}


def _lora_components(pipe: Any) -> list[Any]:
    found = (getattr(pipe, c, None) for c in (*K.DENOISERS, *K.TEXT_ENCODERS))
    return [m for m in found if m is not None and hasattr(m, "modules")]


def _has_lora_layers(model: Any) -> bool:
    return any(hasattr(m, "lora_A") for m in model.modules())


def _count_attached(model: Any, name: str) -> int:
    return sum(1 for m in model.modules() if name in getattr(m, "lora_A", {}))


def _load_adapter(pipe: Any, info: LoraInfo, name: str) -> tuple[str, ...]:
    """Attach one LoRA file as adapter ``name``; verify it attached; return the components that carry it."""
    index = ModuleIndex(pipe)
    expected = match_layers(info, pipe, index).matched
    try:
        source = _load_source(info, index) if info.needs_conversion else str(info.path)
        pipe.load_lora_weights(source, adapter_name=name)
    except LoraError:
        raise
    except Exception as exc:  # diffusers/peft raise ValueError, RuntimeError, KeyError...
        _forget(pipe, name)
        raise LoraError(info.path, f"LoRA '{info.name}' could not be attached: {exc}") from exc
    got = tuple(c for c, names in _adapters_by_component(pipe).items() if name in names)
    loadable = {c for c in info.targets if c != "text_encoder_3" and getattr(pipe, c, None) is not None}
    lost = sorted(loadable - set(got))
    if not got or lost:
        _forget(pipe, name)
        what = "any of its layers" if not got else "its " + ", ".join(lost) + " layers"
        raise LoraError(
            info.path,
            f"LoRA '{info.name}' was not applied: diffusers did not attach {what} (its {info.format} layout"
            f" for {info.group_label} was not recognised)",
        )
    for component, want in expected.items():
        if component not in got:
            continue
        have = _count_attached(getattr(pipe, component), name)
        if have < want:
            log.warning("LoRA %r: only %d of %d %s layers attached", info.name, have, want, component)
    return got


def _forget(pipe: Any, name: str) -> None:
    if any(name in names for names in _adapters_by_component(pipe).values()):
        pipe.delete_adapters(name)


def _load_source(info: LoraInfo, index: ModuleIndex) -> dict:
    """The file as a diffusers-format state dict (converted, alphas baked, prefixes added)."""
    from safetensors.torch import load_file

    sd = {k: v for k, v in load_file(str(info.path), device="cpu").items() if not k.startswith("bundle_emb.")}
    if info.format == "kohya":
        sd = {k: v for k, v in sd.items() if not k.startswith("lora_te3_")}
        family = for_lora_group(info.family_group)
        if family is None or K.group_denoiser(info.family_group) != "transformer":
            return sd  # diffusers reads kohya files for UNets itself
        aliases = {c: index.aliases(c) for c in ("text_encoder", "text_encoder_2") if index.modules(c) is not None}
        conversion = family.convert_kohya_lora(sd, aliases)
        if conversion is None:
            return sd
        converted, skipped = conversion
        if skipped:  # same policy as layers missing from the model: apply the rest, say so
            log.warning(
                "LoRA %r: %d %s layers have no diffusers counterpart and are skipped (e.g. %s)",
                info.name,
                len(skipped),
                info.group_label,
                skipped[0],
            )
        return converted
    return _bake_diffusers(sd, info)


def _bake_diffusers(sd: dict, info: LoraInfo) -> dict:
    """Prefix peft keys with their component and fold ``.alpha`` (alpha / rank) into the up weights."""
    out = {}
    alphas = {k[: -len(".alpha")]: float(v) for k, v in sd.items() if k.endswith(".alpha")}
    for key, value in sd.items():
        if key.endswith(".alpha"):
            continue
        split = K.split_key(key)
        name = split[0] if split else key
        if split and split[1] == "up" and name in alphas:
            rank = value.shape[1]
            value = value * (alphas[name] / rank)
        if info.format == "peft":
            path = key.removeprefix("base_model.model.")
            key = f"{K.peft_component(path) or 'unet'}.{path}"
        out[key] = value
    return out
