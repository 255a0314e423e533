"""Pick the compute device and weight precision from the settings and the hardware."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

_DTYPE_NAMES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


class DeviceError(RuntimeError):
    pass


@dataclass(frozen=True)
class DeviceChoice:
    device: str  # "cpu", "cuda", "mps"
    precision: str  # "fp32", "fp16", "bf16"
    reason: str

    @property
    def dtype(self):
        import torch

        return getattr(torch, _DTYPE_NAMES[self.precision])


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def _mps_available() -> bool:
    import torch

    backend = getattr(torch.backends, "mps", None)
    return bool(backend and backend.is_available())


def resolve_device(
    requested: str,
    precision: str,
    cuda_available: Callable[[], bool] = _cuda_available,
    mps_available: Callable[[], bool] = _mps_available,
) -> DeviceChoice:
    """The device and precision to run with; unavailable explicit choices raise with a fix."""
    if requested == "auto":
        device = "cuda" if cuda_available() else "mps" if mps_available() else "cpu"
    elif requested == "cuda" and not cuda_available():
        raise DeviceError(
            "--device cuda was asked for but torch sees no CUDA GPU; install the CUDA build of torch"
            " (python launch.py --reinstall) or use --device cpu"
        )
    elif requested == "mps" and not mps_available():
        raise DeviceError("--device mps was asked for but this torch build has no MPS support; use --device cpu")
    else:
        device = requested
    if precision != "auto":
        if device == "cpu" and precision == "fp16":
            raise DeviceError("fp16 is not supported for computing on the CPU; use --precision bf16 or fp32")
        return DeviceChoice(device, precision, f"--precision {precision}")
    if device == "cuda":
        return DeviceChoice(device, "fp16", "CUDA GPU: fp16 weights")
    if device == "mps":
        return DeviceChoice(device, "fp16", "Apple GPU: fp16 weights")
    return DeviceChoice(device, "fp32", "CPU: fp32")
