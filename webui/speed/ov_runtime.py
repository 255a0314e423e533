"""The one module that talks to OpenVINO: is it installed, export a torch module to an IR file, compile it.

``openvino`` is an optional dependency (``pip install openvino``, or the ``openvino`` extra that ``launch.py``
installs on machines without a CUDA GPU); nothing here imports it before it is needed.

Export: ``ov.convert_model`` traces the module with example inputs and keeps the listed dimensions dynamic
(-1), so that one IR serves every batch size, image size and prompt length. The IR is written into a
temporary folder next to its destination and renamed into place, so a crash mid-write never leaves a
half-written model that a later start would read.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

IR_NAME = "denoiser.xml"


def openvino_version() -> str:
    """The installed OpenVINO version, "" when it is not installed."""
    if importlib.util.find_spec("openvino") is None:
        return ""
    try:
        return importlib.metadata.version("openvino")
    except importlib.metadata.PackageNotFoundError:
        return ""


def export_ir(
    module: Any,
    example: Mapping[str, Any],
    dynamic_shapes: Mapping[str, Sequence[int]],
    folder: Path,
    *,
    compress_to_fp16: bool,
) -> Path:
    """Convert ``module(**example)`` to an OpenVINO IR in ``folder`` (created atomically); returns the .xml path.

    ``dynamic_shapes``: input name -> shape with -1 for each dynamic dimension, in ``example``'s order.
    ``compress_to_fp16``: store the weights in fp16 (lossless when they came from an fp16 file).
    """
    import openvino as ov
    import torch

    inputs = [(name, list(dynamic_shapes[name]), ov.Type.f32) for name in example]
    with torch.no_grad():
        # share_weights=False: OpenVINO copies the weights; shared ones crashed saving a full-size bf16 UNet
        model = ov.convert_model(module, example_input=tuple(example.values()), input=inputs, share_weights=False)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.with_name(folder.name + f".tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        ov.save_model(model, str(tmp / IR_NAME), compress_to_fp16=compress_to_fp16)
        del model
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder / IR_NAME


def compile_ir(xml_path: Path, threads: int, config: Mapping[str, Any] | None = None) -> Any:
    """The IR compiled for this CPU (latency hint: one stream, ``threads`` threads), ready to infer."""
    import openvino as ov

    properties = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": int(threads), **(config or {})}
    return ov.Core().compile_model(str(xml_path), "CPU", properties)


def compiled_precision(compiled: Any) -> str:
    """The precision a compiled model computes in ("f32", "bf16", ...)."""
    return compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()


class CompiledRunner:
    """Calls a compiled model with torch tensors and returns its first output as a torch tensor."""

    def __init__(self, compiled: Any) -> None:
        self._request = compiled.create_infer_request()

    def __call__(self, inputs: Sequence[Any]) -> Any:
        import torch

        arrays = [t.detach().to("cpu", torch.float32).contiguous().numpy() for t in inputs]
        result = self._request.infer(arrays, share_inputs=True)
        return torch.from_numpy(result[0].copy())
