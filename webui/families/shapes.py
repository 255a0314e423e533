"""Helpers for reading architectures off tensor names and shapes (single files, no tensor data)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

Shapes = Mapping[str, tuple[int, ...]]


class ConfigInferenceError(ValueError):
    """The tensor shapes do not describe an architecture these rules can rebuild."""


def count(shapes: Shapes, prefix: str) -> int:
    """How many numbered children ``prefix<N>.`` exist (max index + 1)."""
    rx = re.compile(re.escape(prefix) + r"(\d+)\.")
    found = [int(m.group(1)) for k in shapes if (m := rx.match(k))]
    return max(found) + 1 if found else 0


def has_prefix(shapes: Shapes, prefix: str) -> bool:
    return any(k.startswith(prefix) for k in shapes)


def need(shapes: Shapes, key: str) -> tuple[int, ...]:
    shape = shapes.get(key)
    if shape is None:
        raise ConfigInferenceError(f"tensor {key!r} is missing")
    return tuple(shape)


def max_index(header: Any, pattern: str) -> int:
    """1 + the largest block number in a header's keys matching ``pattern`` (group 1: ASCII digits, at most 6)."""
    rx = re.compile(pattern)
    found = [int(m.group(1)) for k in header.keys() if (m := rx.match(k))]  # noqa: SIM118 - not a dict
    return max(found) + 1 if found else 0


def context_dim(header: Any, prefix: str) -> int | None:
    """The cross-attention context width of a UNet in a single file (its first ``attn2.to_k``)."""
    for k, info in header.tensors.items():
        if k.startswith(prefix) and k.endswith("attn2.to_k.weight") and len(info.shape) == 2:
            return info.shape[1]
    return None
