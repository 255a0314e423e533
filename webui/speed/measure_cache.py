"""Tuning measurements kept on disk, so that a load does not time the same block again.

The channels_last decision times one ResNet block in both layouts (about a second on a CPU). The
result depends only on the block's shape, the input size, the dtype, the device and the machine, so it
is stored in a small JSON file keyed by those and read back at later loads and later starts.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from webui.speed.json_store import read_all, write_entry

log = logging.getLogger(__name__)


def block_key(block: Any, size: int, batch: int) -> str:
    """What a ResNet block's timing depends on: channels, time embedding, input size, dtype, device."""
    param = next(block.parameters())
    temb = getattr(block, "time_emb_proj", None)
    return (
        f"resnet {block.conv1.in_channels}->{block.conv2.out_channels}"
        f" temb {temb.in_features if temb is not None else 0} {batch}x{size}x{size}"
        f" {str(param.dtype).removeprefix('torch.')} {param.device.type}"
    )


def machine_key(hardware: str) -> str:
    import torch

    return f"{hardware}|torch {torch.__version__}|{torch.get_num_threads()} threads"


class MeasureCache:
    """``wrap(measure)`` gives a ``measure(block, size=, batch=)`` that reads a stored result first."""

    def __init__(self, path: Path | None, machine: str | Callable[[], str]) -> None:
        """``machine``: what the results depend on besides the block (or a callable asked when first needed:
        the device may not be chosen yet when the tuner is built)."""
        self.path = Path(path) if path is not None else None
        self._machine = machine

    @property
    def machine(self) -> str:
        if callable(self._machine):
            self._machine = self._machine()
        return self._machine

    def wrap(self, measure: Callable[..., tuple[float, float]]) -> Callable[..., tuple[float, float]]:
        def cached(block: Any, size: int = 32, batch: int = 2, **kwargs: Any) -> tuple[float, float]:
            key = f"{self.machine}|{block_key(block, size, batch)}"
            stored = self._read().get(key)
            if isinstance(stored, list) and len(stored) == 2:
                return float(stored[0]), float(stored[1])
            result = measure(block, size=size, batch=batch, **kwargs)
            self._write(key, result)
            return result

        return cached

    def _read(self) -> dict:
        return read_all(self.path)

    def _write(self, key: str, result: tuple[float, float]) -> None:
        write_entry(self.path, key, [round(float(result[0]), 3), round(float(result[1]), 3)], "layout measurement")
