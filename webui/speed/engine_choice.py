"""Which engine runs the denoiser on the CPU (``--cpu-engine auto|torch|openvino``), and why.

``choose_engine`` is a table of rules read top to bottom; the first that applies decides:

1. ``torch`` asked for: torch.
2. not on the CPU, OpenVINO not installed, a model it does not export, a precision other than fp32/bf16, or a
   memory mode that manages the denoiser (offload places its weights, slicing / xformers pick its
   attention): torch, with that reason (an explicit ``openvino`` says so as a warning).
3. ``openvino`` asked for: OpenVINO.
4. ``auto`` with torch.compile on: torch (the user asked for the torch compiler).
5. ``auto``: the measurement for this model type on this CPU (``webui.speed.engine_probe``) decides;
   with none stored yet, the first denoiser call measures it (after the export the engine needs anyway).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

ENGINE_CHOICES = ("auto", "torch", "openvino")
OPENVINO_PRECISIONS = ("fp32", "bf16")  # OpenVINO computes in the precision the app chose for the CPU
INSTALL_HINT = "pip install openvino, or run launch.py, which installs it on machines without a CUDA GPU"


@dataclass(frozen=True)
class EngineChoice:
    engine: str  # "torch", "openvino", or "measure" (auto: decided by the first call's measurement)
    reason: str
    warn: bool = False  # the user asked for OpenVINO and does not get it

    def describe(self) -> str:
        names = {"torch": "torch", "openvino": "OpenVINO", "measure": "auto (OpenVINO or torch, measured on first use)"}
        return f"{names[self.engine]} - {self.reason}"


def choose_engine(
    setting: str,
    *,
    device: str,
    precision: str,
    openvino_version: str,
    unsupported: str = "",
    memory_reason: str = "",
    compile_on: bool = False,
    measured: Any = None,
) -> EngineChoice:
    """The engine for one loaded model. ``unsupported``: why its denoiser cannot be exported ("" if it can);
    ``memory_reason``: which memory mode manages the denoiser ("" if none); ``measured``: a stored
    ``EngineProbe`` for this model type on this CPU, or None."""
    if setting not in ENGINE_CHOICES:
        raise ValueError(f"cpu_engine must be one of {', '.join(ENGINE_CHOICES)}, got {setting!r}")
    if setting == "torch":
        return EngineChoice("torch", "--cpu-engine torch")
    explicit = setting == "openvino"
    blocked = [
        (device != "cpu", f"OpenVINO is a CPU engine; this model computes on {device}"),
        (not openvino_version, f"OpenVINO is not installed ({INSTALL_HINT})"),
        (bool(unsupported), unsupported),
        (precision not in OPENVINO_PRECISIONS, f"the OpenVINO engine runs fp32 and bf16 models, not {precision}"),
        (bool(memory_reason), memory_reason),
    ]
    for applies, why in blocked:
        if applies:
            return EngineChoice("torch", why, warn=explicit and device == "cpu")
    if explicit:
        return EngineChoice("openvino", f"--cpu-engine openvino (OpenVINO {openvino_version})")
    if compile_on:
        return EngineChoice("torch", "auto: torch.compile is on, so the denoiser stays in torch")
    if measured is None:
        return EngineChoice("measure", "auto: not measured for this model type on this CPU yet")
    if measured.openvino_faster:
        return EngineChoice("openvino", f"auto: {measured.describe()}")
    return EngineChoice("torch", f"auto: {measured.describe()}; torch is as fast or faster here")


def memory_reason(manages_placement: bool, manages_attention: bool) -> str:
    """Why the memory modes keep the denoiser in torch ("" when they do not)."""
    if manages_placement:
        return "an offload memory mode places the denoiser's weights, so it stays in torch"
    if manages_attention:
        return "a memory mode chose the denoiser's attention kernels (slicing, xformers), so it stays in torch"
    return ""
