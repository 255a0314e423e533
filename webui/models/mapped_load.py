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
    """The dtype weight ``weight`` is kept in, from its stored dtype ``source``: floats in ``dtype``."""
    import torch

    if not source.is_floating_point:
        return source
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
    mapped: MappedFile,
    spans: Mapping[str, Span],
    extras: Any,
    prefix: str,
    dtype: Any,
    keep_fp32: tuple[str, ...],
    threads: int = 1,
) -> dict[str, Any]:
    """Each weight of one component, read from the file (or the side file) into a new tensor of its final
    dtype. ``threads`` readers share the weights, each a contiguous stretch of the file."""
    import torch

    out, jobs = {}, []
    with torch.no_grad():
        for weight, span in spans.items():
            if span.extra:
                source = extras.get_tensor(f"{prefix}/{weight}")
                target = torch.empty(span.shape, dtype=_target_dtype(weight, source.dtype, dtype, keep_fp32))
                target.copy_(source)
            else:
                stored = getattr(torch, span.dtype)
                target = torch.empty(span.shape, dtype=_target_dtype(weight, stored, dtype, keep_fp32))
                jobs.append((span, target))
            out[weight] = target
        jobs.sort(key=lambda job: job[0].offset)
        _run_readers(mapped, _stretches(jobs, threads))
    return out


def _stretches(jobs: list, parts: int) -> list[list]:
    """``jobs`` (in file order) cut into ``parts`` runs of about equal bytes."""
    total = sum(t.numel() * t.element_size() for _, t in jobs)
    runs: list[list] = [[]]
    done = 0
    for job in jobs:
        if done >= total * len(runs) / max(parts, 1) and len(runs) < parts:
            runs.append([])
        runs[-1].append(job)
        done += job[1].numel() * job[1].element_size()
    return [r for r in runs if r]


def _run_readers(mapped: MappedFile, runs: list[list]) -> None:
    import threading

    errors: list[BaseException] = []

    def work(run: list) -> None:
        reader = mapped.reader()
        try:
            with _no_grad():
                for span, target in run:
                    reader.read_into(span, target)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            errors.append(exc)
        finally:
            reader.close()

    if len(runs) <= 1:
        for run in runs:
            work(run)
    else:
        workers = [threading.Thread(target=work, args=(run,), name="weights-reader") for run in runs]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
    if errors:
        raise errors[0]


def _no_grad() -> Any:
    import torch

    return torch.no_grad()


def reader_threads() -> int:
    """One reader: torch's thread pool already casts each piece on every core (two readers measured no faster)."""
    return 1


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
            weights = read_weights(
                mapped, loadmap.components[name], extras, name, dtype, _keep_fp32(module, dtype), reader_threads()
            )
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
