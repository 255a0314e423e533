"""Measure, once per machine, whether bf16 computes faster than fp32 on this CPU.

The probe times the two operations that dominate a UNet step (a 3x3 convolution in
channels_last and a linear layer) in fp32 and in bf16, interleaved so that other load on the
machine hits both alike, and keeps the fastest of a few rounds. About a third of a second; the
result is stored in a small JSON file keyed by CPU, torch version and thread count, so later
starts read it instead of measuring again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from webui.speed.json_store import read_entry, write_entry
from webui.speed.timing import best_ms

log = logging.getLogger(__name__)

ROUNDS = 4
# bf16 is chosen over fp32 only when it is at least this much faster (noise margin).
MIN_SPEEDUP = 1.15


@dataclass(frozen=True)
class ProbeResult:
    fp32_ms: float
    bf16_ms: float
    from_cache: bool = False

    @property
    def speedup(self) -> float:
        return self.fp32_ms / self.bf16_ms if self.bf16_ms > 0 else 0.0

    @property
    def bf16_faster(self) -> bool:
        return self.speedup >= MIN_SPEEDUP

    def describe(self) -> str:
        when = "measured at an earlier start" if self.from_cache else "measured"
        return f"bf16 {self.speedup:.2f}x the speed of fp32 ({when}: {self.bf16_ms:.1f} vs {self.fp32_ms:.1f} ms)"


def _time_ops(rounds: int = ROUNDS) -> tuple[float, float]:
    """(fp32 ms, bf16 ms): best round of conv + linear at UNet sizes."""
    import torch

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, 320, 32, 32, generator=gen)
    a = torch.randn(1024, 1024, generator=gen)
    conv_w = torch.randn(320, 320, 3, 3, generator=gen) * 0.02
    lin_w = torch.randn(1024, 1024, generator=gen) * 0.02
    cases = {}
    for dt in (torch.float32, torch.bfloat16):
        cases[dt] = (
            x.to(dt).contiguous(memory_format=torch.channels_last),
            conv_w.to(dt).contiguous(memory_format=torch.channels_last),
            a.to(dt),
            lin_w.to(dt),
        )

    def op(xx, cw, aa, lw):
        return lambda: (torch.nn.functional.conv2d(xx, cw, padding=1), torch.nn.functional.linear(aa, lw))

    with torch.inference_mode():  # the first round warms up (oneDNN primitive creation)
        ms = best_ms({dt: op(*tensors) for dt, tensors in cases.items()}, rounds)
    return ms[torch.float32], ms[torch.bfloat16]


def _machine_key(cpu_name: str, flags: frozenset[str]) -> str:
    import torch

    return f"{cpu_name}|{','.join(sorted(flags))}|torch {torch.__version__}|{torch.get_num_threads()} threads"


def _read_cache(cache_file: Path | None, key: str) -> ProbeResult | None:
    entry = read_entry(cache_file, key)
    try:
        return ProbeResult(float(entry["fp32_ms"]), float(entry["bf16_ms"]), from_cache=True) if entry else None
    except (ValueError, TypeError, KeyError):
        return None


def _write_cache(cache_file: Path | None, key: str, result: ProbeResult) -> None:
    entry = asdict(result)
    entry.pop("from_cache")
    write_entry(cache_file, key, entry, "precision probe")


def probe_cpu_bf16(
    cpu_name: str,
    flags: frozenset[str],
    cache_file: Path | None = None,
    measure: Callable[[], tuple[float, float]] = _time_ops,
) -> ProbeResult:
    """fp32 vs bf16 speed on this CPU, from ``cache_file`` when this machine was measured before."""
    key = _machine_key(cpu_name, flags)
    cached = _read_cache(cache_file, key)
    if cached is not None:
        return cached
    fp32_ms, bf16_ms = measure()
    result = ProbeResult(fp32_ms, bf16_ms)
    log.info("precision probe: %s", result.describe())
    _write_cache(cache_file, key, result)
    return result
