"""The composed app's services over a temporary folder, as the tests build them (CPU, fp32, contiguous layout)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def tmp_services(root: Path, memory: Any = None, device_memory: Any = None, **overrides: Any) -> Any:
    """``build_services`` with every folder under ``root`` (models in ``root/models``); ``memory`` /
    ``device_memory``: fake probes of the RAM and the GPU (None: the machine's)."""
    from webui.app import build_services
    from webui.config import Settings

    values: dict[str, Any] = {
        "device": "cpu",
        "precision": "fp32",
        # Deterministic across runs: "auto" would measure the layout and could pick either.
        "channels_last": "off",
    }
    values.update(overrides)
    return build_services(Settings.under(root, **values), base=root, memory=memory, device_memory=device_memory)
