"""Choose the CPU engine for one loaded pipeline and attach it: the tuner's one call into the engine parts.

Reads what the choice depends on (OpenVINO's version, whether the denoiser can be exported, the memory
modes, a stored measurement for this model type on this CPU), applies ``webui.speed.engine_choice``'s
rules and attaches ``webui.speed.ov_engine`` where OpenVINO runs (or is to be measured). The choice and
its reason are logged and returned (the load message, the Settings page).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

# auto leaves denoisers smaller than this in torch: their steps take milliseconds, a conversion seconds.
MIN_AUTO_PARAMS = 50_000_000
PROBE_FILE = "engine_probe.json"
IR_FOLDER = "openvino"


def set_up_engine(
    pipe: Any,
    device: Any,  # webui.models.devices.DeviceChoice
    options: Any,  # webui.speed.optimize.SpeedOptions
    cache_dir: Path,
    *,
    runtime: Any = None,
    manages_placement: bool = False,
    manages_attention: bool = False,
) -> Any:
    """The ``EngineState`` of the pipeline's denoiser (None: no denoiser, or auto off the CPU)."""
    from webui.speed.compile import denoiser
    from webui.speed.engine_choice import EngineChoice, choose_engine, memory_reason
    from webui.speed.engine_probe import machine_key, probe_key, read_probe
    from webui.speed.ov_engine import IRStore, Runtime, attach_engine, detach_engine
    from webui.speed.ov_unet import model_signature, unet_spec

    module = denoiser(pipe)
    if module is None:
        return None
    detach_engine(module)
    setting = options.cpu_engine
    if device.device != "cpu" and setting == "auto":
        return None  # a GPU: nothing to say
    runtime = runtime or Runtime.default()
    version = runtime.version()
    spec, unsupported = unet_spec(module)
    probe_file = Path(cache_dir) / PROBE_FILE
    exportable = bool(version and spec is not None and device.device == "cpu")
    machine = machine_key(version) if exportable else ""
    measured = read_probe(probe_file, probe_key(machine, model_signature(module))) if exportable else None
    choice = choose_engine(
        setting,
        device=device.device,
        precision=device.precision,
        openvino_version=version,
        unsupported=unsupported,
        memory_reason=memory_reason(manages_placement, manages_attention),
        compile_on=bool(options.compile),
        measured=measured,
    )
    params = sum(p.numel() for p in module.parameters())
    if choice.engine == "measure" and params < MIN_AUTO_PARAMS:
        size = f"{params / 1e6:.1f}M parameters"
        choice = EngineChoice("torch", f"auto: a small model ({size}): converting it would cost more than it saves")
    (log.warning if choice.warn else log.info)("UNet engine: %s", choice.describe())
    import torch

    return attach_engine(
        module,
        choice,
        IRStore(Path(cache_dir) / IR_FOLDER),
        runtime=runtime,
        probe_file=probe_file,
        machine=machine,
        threads=torch.get_num_threads(),
        precision=device.precision,
    )


def engine_line(manager: Any) -> str:
    """What runs the active model's denoiser, for the Settings page ("" with no model loaded)."""
    from webui.speed.compile import denoiser
    from webui.speed.ov_engine import engine_state

    if manager is None or manager.current_entry is None:
        return ""
    state = engine_state(denoiser(manager.loaded.pipeline))
    return state.describe() if state is not None else ""
