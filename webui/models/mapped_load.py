"""Build a checkpoint's models from its load map: empty modules, then each weight read from the mapped
file straight into its final tensor at the final precision (the cast is the read), assigned in place.

No random initialisation (the modules are made on the meta device), no key conversion (the map has it),
no second copy (``load_state_dict(assign=True)`` keeps the tensors made here). What the conversion
computed comes from the map's side file. ``webui.models.load_map`` makes the maps.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from webui.models.load_map import LoadMap, MappedFile, Span

log = logging.getLogger(__name__)


@dataclass
class LoadTimes:
    """Where a load's time went, in seconds, for the log line."""

    parts: dict[str, float] = field(default_factory=dict)

    def add(self, name: str, seconds: float) -> None:
        self.parts[name] = self.parts.get(name, 0.0) + seconds

    def describe(self) -> str:
        return ", ".join(f"{name} {s:.2f} s" for name, s in self.parts.items() if s >= 0.005) or "-"


def model_class(library: str, cls: str) -> Any:
    return getattr(importlib.import_module(library), cls)


def empty_model(library: str, cls: str, folder: Path, name: str) -> Any:
    """The component's module from its config, its weights on the meta device (nothing allocated)."""
    from accelerate import init_empty_weights

    klass = model_class(library, cls)
    if library == "diffusers":
        config = klass.load_config(str(folder), subfolder=name, local_files_only=True)
        with init_empty_weights():
            return klass.from_config(config)
    config = klass.config_class.from_pretrained(str(Path(folder) / name), local_files_only=True)
    with init_empty_weights():
        return klass(config)


def _target_dtype(weight: str, source: Any, dtype: Any, keep_fp32: tuple[str, ...]) -> Any:
    import torch

    if not source.is_floating_point():
        return source.dtype
    if keep_fp32 and any(m in weight.split(".") for m in keep_fp32):
        return torch.float32
    return dtype


def _keep_fp32(module: Any, dtype: Any) -> tuple[str, ...]:
    """Modules diffusers/transformers keep in fp32 when a model is loaded in fp16 (T5's ``wo``)."""
    import torch

    names = getattr(type(module), "_keep_in_fp32_modules", None)
    if dtype != torch.float16 or not names:
        return ()
    return (names,) if isinstance(names, str) else tuple(names)


def read_weights(
    mapped: MappedFile, spans: Mapping[str, Span], extras: Any, prefix: str, dtype: Any, keep_fp32: tuple[str, ...]
) -> dict[str, Any]:
    """Each weight of one component, read from the map (or the side file) into a new tensor of its final dtype."""
    import torch

    out = {}
    with torch.no_grad():
        for weight, span in spans.items():
            source = extras.get_tensor(f"{prefix}/{weight}") if span.extra else mapped.span(span)
            target = torch.empty(span.shape, dtype=_target_dtype(weight, source, dtype, keep_fp32))
            target.copy_(source)
            out[weight] = target
    return out


def build_models(
    mapped: MappedFile,
    loadmap: LoadMap,
    folder: Path,
    names: Mapping[str, tuple[str, str]],
    dtype: Any,
    extra_path: Any,  # the side file's Path, None, or tensors held in memory
    times: LoadTimes,
) -> dict[str, Any]:
    """name -> module with every weight in place, for the components in ``names``."""
    import time
    from contextlib import nullcontext

    from safetensors import safe_open

    mapped.advise_sequential()
    models = {}
    if extra_path is None:
        ctx = nullcontext(_Extras({}))
    elif hasattr(extra_path, "tensors"):  # held in memory (the cache could not be written)
        ctx = nullcontext(_Extras(extra_path.tensors))
    else:
        ctx = safe_open(str(extra_path), framework="pt")
    with ctx as extras:
        for name, (library, cls) in names.items():
            start = time.perf_counter()
            module = empty_model(library, cls, folder, name)
            times.add("build", time.perf_counter() - start)
            start = time.perf_counter()
            weights = read_weights(mapped, loadmap.components[name], extras, name, dtype, _keep_fp32(module, dtype))
            times.add("read+cast", time.perf_counter() - start)
            start = time.perf_counter()
            missing, unexpected = module.load_state_dict(weights, strict=False, assign=True)
            if unexpected:
                raise ValueError(f"the load map of {name} names weights the model lacks: {unexpected[:3]}")
            module.eval()
            models[name] = module
            times.add("assign", time.perf_counter() - start)
    return models


class _Extras:
    def __init__(self, tensors: Mapping[str, Any]) -> None:
        self._tensors = tensors

    def get_tensor(self, name: str) -> Any:
        return self._tensors[name]
