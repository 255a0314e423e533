"""Putting a module's own ``forward`` back after a speed-up replaced it on the instance (compile, OpenVINO)."""

from __future__ import annotations

from typing import Any


def instance_forward(module: Any) -> Any:
    """The forward set on this instance (an offload hook's, say), or None when it uses its class's."""
    return module.__dict__.get("forward")


def restore_forward(module: Any, previous: Any) -> None:
    """``module``'s forward back to ``previous`` (what ``instance_forward`` gave; None: the class's method)."""
    if previous is None:
        module.__dict__.pop("forward", None)
    else:
        module.forward = previous
