"""Read an upscaler's weights without running code, and let spandrel build the model from them.

``.safetensors`` files are read with safetensors; ``.pth`` / ``.pt`` files with
``torch.load(weights_only=True)``, which refuses any pickle that would import or call something
(spandrel's own file loader is never used: its ``.pt`` path tries TorchScript, which runs code).
The state dict is then handed to spandrel's ``canonicalize_state_dict`` (unwraps ``params_ema``
and the like) and its architecture registry.

spandrel 0.4 imports torchvision at import time for two models that are not upscalers (LaMa
inpainting and RestoreFormer face restoration). Where torchvision is not installed (the CPU torch
build here has no matching torchvision), ``import_spandrel`` gives those two imports a stand-in whose
functions raise, only while spandrel is imported; the stand-in is removed again at once.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import sys
import threading
import types
from pathlib import Path
from typing import Any

from webui.generation.service import JobFailed

SAFE_SUFFIXES = (".safetensors",)
PICKLE_SUFFIXES = (".pth", ".pt")
SUFFIXES = SAFE_SUFFIXES + PICKLE_SUFFIXES
_IMPORT_LOCK = threading.Lock()
_STAND_IN = ("torchvision", "torchvision.transforms", "torchvision.transforms.functional")


class UpscalerError(JobFailed):
    """An upscaler that cannot be loaded or run; the message says why and what to do."""


def _needs_torchvision(*_: Any, **__: Any) -> Any:
    raise UpscalerError("this spandrel architecture needs torchvision, which is not installed; it is not an upscaler")


def _stand_in_modules() -> dict[str, types.ModuleType]:
    modules = {}
    for name in _STAND_IN:
        module = types.ModuleType(name)
        module.__spec__ = importlib.machinery.ModuleSpec(name, None, is_package=True)
        modules[name] = module
    functional = modules["torchvision.transforms.functional"]
    functional.rotate = functional.normalize = _needs_torchvision  # type: ignore[attr-defined]
    functional.InterpolationMode = types.SimpleNamespace(BILINEAR="bilinear", NEAREST="nearest")  # type: ignore[attr-defined]
    modules["torchvision"].transforms = modules["torchvision.transforms"]  # type: ignore[attr-defined]
    modules["torchvision.transforms"].functional = functional  # type: ignore[attr-defined]
    return modules


def import_spandrel() -> Any:
    """The ``spandrel`` module (imported on first use; see the module docstring about torchvision)."""
    with _IMPORT_LOCK:
        if "spandrel" in sys.modules:
            return sys.modules["spandrel"]
        if importlib.util.find_spec("torchvision") is not None:
            import spandrel

            return spandrel
        stand_in = _stand_in_modules()
        sys.modules.update(stand_in)
        try:
            import spandrel
        finally:
            for name, module in stand_in.items():
                if sys.modules.get(name) is module:
                    del sys.modules[name]
        return spandrel


def read_state_dict(path: Path) -> dict[str, Any]:
    """The tensors of an upscaler file, read without running code; ``UpscalerError`` says why not."""
    suffix = path.suffix.lower()
    if suffix in SAFE_SUFFIXES:
        return _read_safetensors(path)
    if suffix in PICKLE_SUFFIXES:
        return _read_pickle(path)
    raise UpscalerError(f"{path.name}: unsupported file type {suffix!r}; use .safetensors (or .pth / .pt)")


def _read_safetensors(path: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    try:
        return dict(load_file(str(path), device="cpu"))
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types for a damaged header
        raise UpscalerError(f"{path.name}: cannot read this safetensors file ({exc}); download it again") from None


def _read_pickle(path: Path) -> dict[str, Any]:
    import pickle

    import torch

    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise UpscalerError(
            f"{path.name}: this file holds code or objects that the safe loader refuses; use the model's"
            " .safetensors version, or convert it with a tool you trust"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise UpscalerError(f"{path.name}: cannot read this PyTorch file ({exc}); it may be damaged") from None
    if not isinstance(obj, dict):
        raise UpscalerError(f"{path.name}: this PyTorch file does not hold a state dict of tensors")
    return obj


def load_model(path: Path, device: Any = "cpu") -> Any:
    """spandrel's ``ImageModelDescriptor`` for an upscaler file, in eval mode on ``device``."""
    spandrel = import_spandrel()
    state = spandrel.canonicalize_state_dict(read_state_dict(path))
    try:
        descriptor = spandrel.ModelLoader(device="cpu").load_from_state_dict(state)
    except spandrel.UnsupportedModelError:
        raise UpscalerError(
            f"{path.name}: spandrel does not recognise this model's architecture; it is not an upscaler"
            " spandrel supports (ESRGAN, Real-ESRGAN, SwinIR, DAT, HAT, OmniSR, SPAN ...)"
        ) from None
    except (KeyError, RuntimeError, ValueError, IndexError) as exc:
        raise UpscalerError(f"{path.name}: its weights do not fit the architecture they look like ({exc})") from None
    if not isinstance(descriptor, spandrel.ImageModelDescriptor) or descriptor.purpose not in ("SR", "Restoration"):
        raise UpscalerError(f"{path.name}: this is a {descriptor.architecture.name} model, not an upscaler")
    return descriptor.to(device).eval()
