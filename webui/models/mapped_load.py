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

from webui.models.load_map import LoadMap, MappedFile, Span, contiguous_stride

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


@dataclass
class ReadResult:
    """One component's weights, and where they came from."""

    weights: dict[str, Any] = field(default_factory=dict)
    # weights this load computed (cast, or made by the conversion): what a converted copy keeps
    computed: dict[str, Any] = field(default_factory=dict)
    # weights that are views of a converted copy (kept in the next copy too)
    from_copy: dict[str, Any] = field(default_factory=dict)
    # (file, offset, bytes) of the views: the pages to map in before the model runs
    views: list[tuple[Any, int, int]] = field(default_factory=list)


def read_weights(
    mapped: MappedFile,
    spans: Mapping[str, Span],
    extras: Any,
    prefix: str,
    dtype: Any,
    keep_fp32: tuple[str, ...],
    threads: int = 1,
    copy: tuple[MappedFile, Mapping[str, Span]] | None = None,
    view_file: bool = False,
) -> ReadResult:
    """Each weight of one component in its final dtype: a view of the converted copy (``copy``: its map
    and this component's spans) where that holds it; with ``view_file``, a view of the file where it is
    stored in that dtype (no copy); else read from the file (or the side file) into a new tensor.
    ``threads`` readers share the reads, each a contiguous stretch of the file.

    ``view_file`` is for weights that are moved to another device straight after: a model that stays on
    the CPU keeps no view of the user's file, which another program may rewrite in place under it (a view
    would then change, or fault once the file is shorter); the converted copy is the app's own file, only
    ever replaced by a rename."""
    import torch

    result, jobs = ReadResult(), []
    copied = copy[1] if copy is not None else {}
    with torch.no_grad():
        for weight, span in spans.items():
            stored = getattr(torch, span.dtype)
            want = _target_dtype(weight, stored, dtype, keep_fp32)
            held = copied.get(weight)
            if held is not None and held.dtype == str(want).removeprefix("torch.") and held.shape == span.shape:
                target = copy[0].span(held)
                result.from_copy[weight] = target
                result.views.append((copy[0], held.offset, target.nbytes))
            elif span.extra:
                source = extras.get_tensor(f"{prefix}/{weight}")
                target = torch.empty(span.shape, dtype=_target_dtype(weight, source.dtype, dtype, keep_fp32))
                target.copy_(source)
                result.computed[weight] = target
            elif view_file and want == stored and tuple(span.stride) == contiguous_stride(span.shape):
                target = mapped.span(span)
                result.views.append((mapped, span.offset, target.nbytes))
            else:
                target = torch.empty(span.shape, dtype=want)
                jobs.append((span, target))
                result.computed[weight] = target
            result.weights[weight] = target
        jobs.sort(key=lambda job: job[0].offset)
        _run_readers(mapped, _stretches(jobs, threads))
    return result


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


@dataclass(frozen=True)
class CopyPolicy:
    """Where converted copies are kept and how many bytes they may take (0: none are written)."""

    cache_dir: Path
    budget: int


def build_models(
    mapped: MappedFile,
    loadmap: LoadMap,
    folder: Path,
    names: Mapping[str, tuple[str, str]],
    dtype: Any,
    extra_path: Any,  # the side file's Path, None, or tensors held in memory
    times: LoadTimes,
    copies: CopyPolicy | None = None,
    view_file: bool = False,
) -> dict[str, Any]:
    """name -> module with every weight in place, for the components in ``names``.

    Weights come from the converted copy (``webui.models.converted_copy``) when there is one: views of
    it, mapped in. Otherwise they are read (and cast) from the file, and what was read is kept as that copy
    for the next load, when ``copies`` allows. With ``view_file`` (the weights go to another device next),
    weights stored in their final dtype are views of the file instead, and are not copied."""
    import time
    from contextlib import nullcontext

    from safetensors import safe_open

    from webui.models import converted_copy

    dtype_name = str(dtype).removeprefix("torch.")
    start = time.perf_counter()
    stored = None
    if copies is not None:
        stored = converted_copy.find(copies.cache_dir, loadmap.key, loadmap.stamp, dtype_name)
    copy_map = MappedFile(stored.path, stored.header) if stored is not None else None
    times.add("map", time.perf_counter() - start)
    mapped.advise_sequential()
    models, results = {}, {}
    if extra_path is None:
        ctx = nullcontext(_Extras({}))
    elif hasattr(extra_path, "tensors"):  # held in memory (the cache could not be written)
        ctx = nullcontext(_Extras(extra_path.tensors))
    else:
        ctx = safe_open(str(extra_path), framework="pt")
    try:
        with ctx as extras:
            for name, (library, cls) in names.items():
                start = time.perf_counter()
                module = empty_model(library, cls, folder, name)
                times.add("build", time.perf_counter() - start)
                start = time.perf_counter()
                held = (copy_map, stored.spans.get(name, {})) if copy_map is not None else None
                result = read_weights(
                    mapped,
                    loadmap.components[name],
                    extras,
                    name,
                    dtype,
                    _keep_fp32(module, dtype),
                    reader_threads(),
                    held,
                    view_file,
                )
                times.add("read+cast", time.perf_counter() - start)
                start = time.perf_counter()
                missing, unexpected = module.load_state_dict(result.weights, strict=False, assign=True)
                if unexpected:
                    raise ValueError(f"the load map of {name} names weights the model lacks: {unexpected[:3]}")
                module.eval()
                models[name] = module
                results[name] = result
                times.add("assign", time.perf_counter() - start)
        start = time.perf_counter()
        _populate([v for r in results.values() for v in r.views])
        times.add("map in", time.perf_counter() - start)
    finally:
        if copy_map is not None:
            copy_map.close()
    if copies is not None and any(r.computed for r in results.values()):
        _keep_copy(copies, loadmap, dtype_name, results, times)
    return models


def _populate(views: list[tuple[MappedFile, int, int]]) -> None:
    """Map in the pages the views use, so that the first image does not wait on page faults."""
    by_file: dict[int, tuple[MappedFile, list[tuple[int, int]]]] = {}
    for mapped, offset, nbytes in views:
        by_file.setdefault(id(mapped), (mapped, []))[1].append((offset, nbytes))
    for mapped, ranges in by_file.values():
        mapped.populate(ranges)


def _keep_copy(
    copies: CopyPolicy, loadmap: LoadMap, dtype_name: str, results: Mapping[str, Any], times: LoadTimes
) -> None:
    from webui.models import converted_copy

    tensors = {}
    for name, result in results.items():
        for weight, t in {**result.from_copy, **result.computed}.items():
            tensors[f"{name}/{weight}"] = t
    took = converted_copy.write(copies.cache_dir, loadmap.key, loadmap.stamp, dtype_name, tensors, copies.budget)
    if took is not None:
        times.add("write converted copy", took)


class _Extras:
    """Side tensors held in memory, read like a ``safe_open`` file."""

    def __init__(self, tensors: Mapping[str, Any]) -> None:
        self._tensors = tensors

    def get_tensor(self, name: str) -> Any:
        return self._tensors[name]
