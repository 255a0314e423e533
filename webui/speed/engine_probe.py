"""Measure, once per model type and machine, whether OpenVINO runs the denoiser faster than torch.

Both engines run the same denoiser call (batch 1, a small latent, the real prompt embedding) in turns,
after an untimed warm-up each, best of a few rounds (``webui.speed.timing``): a few seconds for a
full-size SD 1.5 UNet on two cores. The result is stored in a small JSON file keyed by CPU, torch and
OpenVINO versions, thread count and the model's architecture and dtype (its speed does not depend on its
weights), so later loads, of this checkpoint or another of the same type, read it instead.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from webui.speed.json_store import read_entry, write_entry
from webui.speed.timing import best_ms

log = logging.getLogger(__name__)

ROUNDS = 2
# OpenVINO is chosen only when it is at least this much faster (noise margin on a shared machine).
MIN_SPEEDUP = 1.1


@dataclass(frozen=True)
class EngineProbe:
    torch_ms: float
    openvino_ms: float
    from_cache: bool = False

    @property
    def speedup(self) -> float:
        return self.torch_ms / self.openvino_ms if self.openvino_ms > 0 else 0.0

    @property
    def openvino_faster(self) -> bool:
        return self.speedup >= MIN_SPEEDUP

    def describe(self) -> str:
        when = "measured at an earlier start" if self.from_cache else "measured"
        return (
            f"OpenVINO {self.speedup:.2f}x the speed of torch for this model"
            f" ({when}: {self.openvino_ms:.0f} vs {self.torch_ms:.0f} ms per denoiser call)"
        )


def probe_key(machine: str, signature: str) -> str:
    return f"{machine}|{signature}"


def machine_key(openvino_version: str) -> str:
    """CPU, its flags, torch and OpenVINO versions, threads: what the measurement depends on besides the model."""
    import torch

    from webui.speed.cpu_features import detect_cpu_features

    cpu = detect_cpu_features()
    flags = ",".join(sorted(cpu.flags))
    return f"{cpu.name}|{flags}|torch {torch.__version__}|openvino {openvino_version}|{torch.get_num_threads()} threads"


def read_probe(cache_file: Path | None, key: str) -> EngineProbe | None:
    entry = read_entry(cache_file, key)
    try:
        return EngineProbe(float(entry["torch_ms"]), float(entry["openvino_ms"]), from_cache=True) if entry else None
    except (ValueError, TypeError, KeyError):
        return None


def write_probe(cache_file: Path | None, key: str, probe: EngineProbe) -> None:
    write_entry(cache_file, key, {"torch_ms": probe.torch_ms, "openvino_ms": probe.openvino_ms}, "engine measurement")


def measure_engines(
    torch_call: Callable[[], Any], openvino_call: Callable[[], Any], rounds: int = ROUNDS
) -> EngineProbe:
    """Time both calls in turns (warm-up first, best of ``rounds``)."""
    import torch

    with torch.inference_mode():
        ms = best_ms({"torch": torch_call, "openvino": openvino_call}, rounds)
    probe = EngineProbe(ms["torch"], ms["openvino"])
    log.info("engine probe: %s", probe.describe())
    return probe
