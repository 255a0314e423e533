"""What the CPU can do for reduced precision: AMX tiles and AVX-512 BF16/FP16 instructions.

Read from ``torch.cpu.get_capabilities()`` (cpuinfo, which checks that the OS enabled the
registers) with the ``flags`` line of ``/proc/cpuinfo`` as the fallback. A virtual machine can
hide AMX even on a CPU that has it; then only the AVX-512 BF16 instructions are left, and those
are no faster than fp32 FMAs on current Xeons, which is why the precision choice measures them
(``webui.speed.probe``) instead of trusting the flag.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

# our name -> (torch.cpu.get_capabilities() key, /proc/cpuinfo flag)
_FEATURES: Mapping[str, tuple[str, str]] = {
    "amx_bf16": ("amx_bf16", "amx_bf16"),
    "amx_tile": ("amx_tile", "amx_tile"),
    "avx512_bf16": ("avx512_bf16", "avx512_bf16"),
    "avx512_fp16": ("avx512_fp16", "avx512_fp16"),
    "avx512f": ("avx512_f", "avx512f"),
    "avx2": ("avx2", "avx2"),
}


@dataclass(frozen=True)
class CpuFeatures:
    name: str
    flags: frozenset[str]  # our names from _FEATURES that the CPU has

    @property
    def amx(self) -> bool:
        return {"amx_bf16", "amx_tile"} <= self.flags

    @property
    def avx512_bf16(self) -> bool:
        return "avx512_bf16" in self.flags

    @property
    def bf16_hardware(self) -> str | None:
        """ "amx", "avx512_bf16" or None: the fastest bf16 matrix hardware present."""
        if self.amx:
            return "amx"
        if self.avx512_bf16:
            return "avx512_bf16"
        return None

    def describe(self) -> str:
        hw = {"amx": "AMX", "avx512_bf16": "AVX-512 BF16 (no AMX)", None: "no bf16 matrix instructions"}
        return f"{self.name or 'CPU'}: {hw[self.bf16_hardware]}"


def _from_torch() -> tuple[str, set[str]] | None:
    import torch

    get = getattr(getattr(torch, "cpu", None), "get_capabilities", None)
    if get is None:
        return None
    try:
        caps = get()
    except (RuntimeError, OSError):
        return None
    flags = {ours for ours, (key, _) in _FEATURES.items() if caps.get(key)}
    return str(caps.get("cpu_name", "")), flags


def _from_proc(cpuinfo: Path) -> tuple[str, set[str]]:
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError:
        return "", set()
    name, words = "", set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and not name:
            name = value.strip()
        elif key == "flags" and not words:
            words = set(value.split())
    return name, {ours for ours, (_, flag) in _FEATURES.items() if flag in words}


def detect_cpu_features(
    torch_caps: Callable[[], tuple[str, set[str]] | None] = _from_torch,
    cpuinfo: Path = Path("/proc/cpuinfo"),
) -> CpuFeatures:
    """The CPU's features; torch's cpuinfo when it answers, else /proc/cpuinfo, else none."""
    found = torch_caps()
    proc_name, proc_flags = _from_proc(cpuinfo)
    if found is None:
        return CpuFeatures(proc_name, frozenset(proc_flags))
    name, flags = found
    return CpuFeatures(proc_name or name, frozenset(flags))
