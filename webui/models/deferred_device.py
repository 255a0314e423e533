"""The device choice while it is being made: choosing needs torch, and the first page must not wait for it.

``DeferredDevice`` stands where a ``DeviceChoice`` is expected (the model manager, the speed tuner, the
services): reading any of its attributes (``device``, ``dtype``, ``describe()``...) waits for the choice,
which a ``webui.deferred.Deferred`` makes on a background thread (importing torch, asking it for CUDA/MPS,
the cached CPU precision probe). Only ``ready()`` and ``resolved()`` are its own. Everything that reads
the device runs on a model load, after the server listens; the page asks ``ready()`` first and says that
the device is still being detected instead of waiting.
"""

from __future__ import annotations

from typing import Any

from webui.deferred import Deferred
from webui.models.devices import DeviceChoice


class DeferredDevice:
    def __init__(self, choice: Deferred[DeviceChoice]) -> None:
        self._choice = choice

    def ready(self) -> bool:
        """Whether the choice is made (reading an attribute would not wait)."""
        return self._choice.ready()

    def resolved(self) -> DeviceChoice:
        """The choice, waiting for it; raises ``DeviceError`` when the asked-for device is not there."""
        return self._choice.get()

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):  # copy/pickle probe these on an instance without __init__'s attributes
            raise AttributeError(name)
        return getattr(self._choice.get(), name)

    def __repr__(self) -> str:
        if self.ready() and self._choice.error() is None:
            return f"DeferredDevice({self._choice.get()!r})"
        return "DeferredDevice(<not chosen>)"
