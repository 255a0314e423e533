"""A single-file checkpoint to a pipeline through its load map: trace the map at the first load of a file,
read every later load straight from the mapped file.

The tokenizers and the scheduler come from the generated config folder, exactly as ``from_single_file``
takes them; the pipeline is put together by ``from_pretrained`` with every model passed in.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from webui.models import load_map
from webui.models.mapped_load import CopyPolicy, LoadTimes, build_models
from webui.models.safetensors_header import SafetensorsHeader

log = logging.getLogger(__name__)


def mapped_pipeline(
    file: Path, header: SafetensorsHeader, folder: Path, cls: Any, kwargs: dict, ctx: Any, times: LoadTimes
) -> tuple[Any, load_map.LoadMap] | None:
    """(pipeline, its map), or None when this file cannot go through a map (the caller loads it the
    standard way). ``kwargs``: components given from elsewhere (separate text encoders, None for left out)."""
    dtype_name = load_map.file_dtype(header)
    if dtype_name is None:
        log.info("%s mixes weight dtypes (%s): loading it the standard way", file.name, ", ".join(sorted(header.dtypes)))
        return None
    names = {n: v for n, v in load_map.weighted_components(folder).items() if n not in kwargs}
    mapped = load_map.MappedFile(file, header)
    try:
        loadmap = load_map.load(ctx.cache_dir, header, file)
        if loadmap is None or not loadmap.covers(set(names)):
            if not load_map.aligned(header):
                log.info("%s has tensors at unaligned offsets: loading it the standard way", file.name)
                return None
            start = time.perf_counter()
            try:
                loadmap, extras, traced = load_map.trace(mapped, folder, names, dtype_name)
            except Exception:  # noqa: BLE001 - the standard load gives this file's error in words
                log.info("%s: the conversion failed on its mapped tensors; loading it the standard way", file.name)
                return None
            del traced
            times.add("convert (first load)", time.perf_counter() - start)
            if not load_map.pays(loadmap, header.file_size):
                log.info(
                    "%s: %.0f MiB of its weights are computed by the conversion; loading it the standard way",
                    file.name,
                    loadmap.extra_bytes / 2**20,
                )
                return None
            extra = _store(ctx.cache_dir, loadmap, extras)
            del extras
        else:
            extra = load_map.extra_file(ctx.cache_dir, loadmap)
        copies = CopyPolicy(ctx.cache_dir, ctx.copy_budget) if ctx.copy_budget > 0 else None
        view_file = str(ctx.device) != "cpu"
        models = build_models(mapped, loadmap, folder, names, ctx.dtype, extra, times, copies, view_file)
    finally:
        mapped.close()
    start = time.perf_counter()
    pipe = cls.from_pretrained(str(folder), local_files_only=True, **kwargs, **models)
    times.add("tokenizers+scheduler", time.perf_counter() - start)
    return pipe, loadmap


def _store(cache_dir: Path, loadmap: load_map.LoadMap, extras: dict) -> Any:
    """Save the map; the side file to read now (a temporary one when the cache cannot be written)."""
    try:
        load_map.save(cache_dir, loadmap, extras)
        return load_map.extra_file(cache_dir, loadmap)
    except OSError as exc:  # a read-only cache: this load still goes through the map, the next traces again
        log.warning("could not store the load map in %s (%s); the next load converts again", cache_dir, exc)
        return _InMemory(extras)


class _InMemory:
    """Side tensors held in memory, read like a side file."""

    def __init__(self, tensors: dict) -> None:
        self.tensors = dict(tensors)


def remember_finite(cache_dir: Path, loadmap: load_map.LoadMap, dtype: str) -> None:
    """These bytes at this precision passed the NaN/inf check: later loads skip it."""
    loadmap.finite[dtype] = True
    try:
        load_map.write_json(load_map.json_file(cache_dir, loadmap), loadmap)
    except OSError as exc:  # a read-only cache only costs the check again
        log.warning("could not store the load map of %s: %s", loadmap.key, exc)
