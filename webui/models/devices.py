"""Pick the compute device and the precision of each component from the settings and the hardware.

``--precision auto``:

* CUDA: bf16 where the GPU supports it (Ampere and later), fp16 on older GPUs.
* Apple GPU: fp16.
* CPU: bf16 with AMX; with AVX-512 BF16 but no AMX (a VM can hide AMX) bf16 only when a short
  measurement shows it faster than fp32 (``webui.speed.probe``); fp32 otherwise.

The VAE decodes in the same precision except fp16 with a VAE that overflows in fp16 (its config
says ``force_upcast``, as SDXL's): then fp32 (for the decode; its weights stay in the pipeline's
dtype). bf16 has fp32's range, so it does not overflow. ``webui.speed.vae_guard`` checks every
decode for NaN/inf and retries in fp32 anyway.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_DTYPE_NAMES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}
PRECISIONS = ("fp32", "fp16", "bf16")
VAE_PRECISIONS = ("auto", "fp32")


class DeviceError(RuntimeError):
    pass


def torch_dtype(precision: str) -> Any:
    import torch

    return getattr(torch, _DTYPE_NAMES[precision])


def _force_upcast(vae_config: Any) -> bool:
    if vae_config is None:
        return False
    if isinstance(vae_config, dict):
        return bool(vae_config.get("force_upcast", False))
    return bool(getattr(vae_config, "force_upcast", False))


@dataclass(frozen=True)
class DeviceChoice:
    device: str  # "cpu", "cuda", "mps"
    precision: str  # "fp32", "fp16", "bf16": denoiser and text encoders
    reason: str
    vae_precision: str = "auto"  # decode precision. "auto": as ``precision``, fp32 for fp16-unsafe VAEs; "fp32"
    hardware: str = ""  # what was found, e.g. "Intel Xeon: AVX-512 BF16 (no AMX)"

    @property
    def dtype(self):
        return torch_dtype(self.precision)

    @property
    def text_encoder_dtype(self):
        return self.dtype

    def vae_precision_for(self, vae_config: Any = None) -> str:
        """The precision a VAE with this config decodes in (``force_upcast`` matters under fp16)."""
        if self.vae_precision == "fp32" or self.precision == "fp32":
            return "fp32"
        if self.precision == "fp16" and _force_upcast(vae_config):
            return "fp32"
        return self.precision

    def vae_dtype_for(self, vae_config: Any = None):
        return torch_dtype(self.vae_precision_for(vae_config))

    def describe(self, vae_config: Any = None) -> str:
        """One line for the log and the UI: what runs in which precision, and why."""
        vae = self.vae_precision_for(vae_config)
        if vae_config is None and self.precision == "fp16" and self.vae_precision == "auto":
            vae = "fp16, fp32 for VAEs that overflow in fp16"
        text = f"{self.device}: {self.precision} (VAE {vae}) - {self.reason}"
        return f"{text} [{self.hardware}]" if self.hardware else text


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def _cuda_bf16() -> bool:
    import torch

    return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())


def _mps_available() -> bool:
    import torch

    backend = getattr(torch.backends, "mps", None)
    return bool(backend and backend.is_available())


def _pick_device(requested: str, cuda_available: Callable[[], bool], mps_available: Callable[[], bool]) -> str:
    if requested == "auto":
        return "cuda" if cuda_available() else "mps" if mps_available() else "cpu"
    if requested == "cuda" and not cuda_available():
        raise DeviceError(
            "--device cuda was asked for but torch sees no CUDA GPU; install the CUDA build of torch"
            " (python launch.py --reinstall) or use --device cpu"
        )
    if requested == "mps" and not mps_available():
        raise DeviceError("--device mps was asked for but this torch build has no MPS support; use --device cpu")
    return requested


def _auto_cpu(cpu_features: Callable[[], Any], cpu_probe: Callable[[Any], Any]) -> tuple[str, str, str]:
    """(precision, reason, hardware) for the CPU."""
    features = cpu_features()
    hardware = features.describe()
    kind = features.bf16_hardware
    if kind == "amx":
        return "bf16", "AMX computes bf16 about 3x faster than fp32", hardware
    if kind == "avx512_bf16":
        probe = cpu_probe(features)
        if probe.bf16_faster:
            return "bf16", f"measured {probe.describe()}", hardware
        return "fp32", f"measured {probe.describe()}; fp32 is faster here without AMX", hardware
    return "fp32", "no bf16 matrix instructions on this CPU", hardware


def _default_cpu_probe(probe_cache: Path | None) -> Callable[[Any], Any]:
    def probe(features: Any) -> Any:
        from webui.speed.probe import probe_cpu_bf16

        return probe_cpu_bf16(features.name, features.flags, cache_file=probe_cache)

    return probe


def _default_cpu_features() -> Any:
    from webui.speed.cpu_features import detect_cpu_features

    return detect_cpu_features()


def resolve_device(
    requested: str,
    precision: str,
    cuda_available: Callable[[], bool] = _cuda_available,
    mps_available: Callable[[], bool] = _mps_available,
    *,
    vae_precision: str = "auto",
    probe_cache: Path | None = None,
    cuda_bf16: Callable[[], bool] = _cuda_bf16,
    cpu_features: Callable[[], Any] = _default_cpu_features,
    cpu_probe: Callable[[Any], Any] | None = None,
) -> DeviceChoice:
    """The device and precisions to run with; unavailable explicit choices raise with a fix.

    ``probe_cache``: a JSON file where the CPU bf16 measurement is kept between starts.
    """
    if vae_precision not in VAE_PRECISIONS:
        raise DeviceError(f"unknown VAE precision {vae_precision!r}; use one of {', '.join(VAE_PRECISIONS)}")
    device = _pick_device(requested, cuda_available, mps_available)
    if precision != "auto":
        if precision not in PRECISIONS:
            raise DeviceError(f"unknown precision {precision!r}; use auto, {', '.join(PRECISIONS)}")
        if device == "cpu" and precision == "fp16":
            raise DeviceError("fp16 is not supported for computing on the CPU; use --precision bf16 or fp32")
        return DeviceChoice(device, precision, f"--precision {precision}", vae_precision)
    if device == "cuda":
        if cuda_bf16():
            return DeviceChoice(device, "bf16", "CUDA GPU with bf16 support", vae_precision)
        return DeviceChoice(device, "fp16", "CUDA GPU without bf16 support: fp16", vae_precision)
    if device == "mps":
        return DeviceChoice(device, "fp16", "Apple GPU: fp16", vae_precision)
    chosen, reason, hardware = _auto_cpu(cpu_features, cpu_probe or _default_cpu_probe(probe_cache))
    return DeviceChoice(device, chosen, f"CPU: {reason}", vae_precision, hardware)
