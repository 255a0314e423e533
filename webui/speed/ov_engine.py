"""Run a pipeline's UNet through OpenVINO, with torch wherever the export does not cover a call.

``attach_engine(module, choice, ...)`` sets the UNet's instance ``forward`` (as ``webui.speed.compile`` does
for its regions; the class, torch and diffusers are untouched) to an ``OpenVinoDenoiser``. Every caller
keeps seeing the real UNet: its config, dtype, LoRA loading, ControlNet's forward pre-hook. On the first call
the engine can serve, it converts the UNet to an OpenVINO IR (dynamic batch, latent size and prompt length),
or finds the one stored for these weights, and compiles it (OpenVINO keeps the compiled blob in its own
cache, so later loads compile in about a second). With ``auto`` and no stored measurement for this model type,
that first call also measures both engines (``webui.speed.engine_probe``) and keeps torch if it is as fast.

Stored IRs live in ``cache/openvino/<key>/`` where the key covers the weights (``weights_fingerprint``), the
architecture, the OpenVINO version and the export format; the most recently used few are kept.
A call the export cannot serve (``webui.speed.ov_unet.call_inputs``, an active LoRA, other attention
processors) runs in torch; each reason is logged once and counted in ``EngineState``.
"""

from __future__ import annotations

import inspect
import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from webui.speed import ov_unet
from webui.speed.engine_choice import EngineChoice
from webui.speed.engine_probe import measure_engines, probe_key, write_probe
from webui.speed.forwards import instance_forward, restore_forward

log = logging.getLogger(__name__)

KEEP_MODELS = 2  # stored IRs (and their compiled blobs) kept; SD 1.5 takes about 3.4 GB of disk for both
OPENVINO_HINTS = {"fp32": "f32", "bf16": "bf16"}  # the app's precision -> OpenVINO's inference precision
PROBE_SIDE = 32  # latent side the auto measurement runs at (256 px for SD 1.5)


@dataclass
class Runtime:
    """The OpenVINO calls the engine makes (tests pass fakes)."""

    export_ir: Callable[..., Path]
    compile_ir: Callable[..., Any]
    runner: Callable[[Any], Callable[[list], Any]]
    version: Callable[[], str]
    precision: Callable[[Any], str] = lambda compiled: "f32"

    @classmethod
    def default(cls) -> Runtime:
        from webui.speed import ov_runtime as ov

        return cls(ov.export_ir, ov.compile_ir, ov.CompiledRunner, ov.openvino_version, ov.compiled_precision)


@dataclass
class EngineState:
    """What runs the UNet of one loaded model, and what fell back to torch so far."""

    choice: EngineChoice
    engine: str = ""  # "openvino" / "torch" / "measure" (until the first call decides)
    reason: str = ""
    openvino_calls: int = 0
    torch_calls: dict[str, int] = field(default_factory=dict)
    prepare_seconds: float = 0.0
    precision: str = ""  # what OpenVINO computes in once compiled ("f32", "bf16")

    def __post_init__(self) -> None:
        self.engine = self.engine or self.choice.engine
        self.reason = self.reason or self.choice.reason

    def describe(self) -> str:
        names = {"openvino": "OpenVINO", "torch": "torch", "measure": "auto (measured on the first image)"}
        computes = f" ({self.precision})" if self.engine == "openvino" and self.precision else ""
        text = f"UNet engine: {names[self.engine]}{computes} - {self.reason}"
        if self.engine == "openvino" and self.torch_calls:
            fell = ", ".join(f"{why} ({n})" for why, n in self.torch_calls.items())
            text += f"; calls run in torch instead: {fell}"
        return text


class IRStore:
    """``root/<key>/denoiser.xml`` per exported model, ``root/blobs`` for OpenVINO's compiled-model cache."""

    def __init__(self, root: Path, keep: int = KEEP_MODELS) -> None:
        self.root = Path(root)
        self.keep = keep

    @property
    def blobs(self) -> Path:
        return self.root / "blobs"

    def folder(self, key: str) -> Path:
        return self.root / key

    def find(self, key: str) -> Path | None:
        xml = self.folder(key) / "denoiser.xml"
        if xml.exists() and xml.with_suffix(".bin").exists():
            os.utime(self.folder(key))  # most recently used
            return xml
        return None

    def trim(self) -> list[str]:
        """Remove the least recently used models beyond ``keep`` (the blob cache goes with them) and conversions
        a crashed process left over an hour ago; returns the keys of the models removed."""
        for stale in self.root.glob("*.tmp-*"):
            if time.time() - stale.stat().st_mtime > 3600:
                shutil.rmtree(stale, ignore_errors=True)
        models = [p for p in self.root.iterdir() if p.is_dir() and p.name != "blobs" and ".tmp-" not in p.name]
        models.sort(key=lambda p: p.stat().st_mtime, reverse=True)
        removed = [p.name for p in models[self.keep :]]
        for name in removed:
            shutil.rmtree(self.root / name, ignore_errors=True)
        if removed:  # OpenVINO names its blobs by hashes: drop them all, the kept models recompile once
            shutil.rmtree(self.blobs, ignore_errors=True)
        return removed


class OpenVinoDenoiser:
    """The UNet's ``forward`` while the engine is attached: OpenVINO where it can, the eager forward elsewhere."""

    def __init__(
        self,
        module: Any,
        spec: ov_unet.UNetSpec,
        state: EngineState,
        store: IRStore,
        *,
        runtime: Runtime,
        probe_file: Path | None = None,
        machine: str = "",
        threads: int = 1,
        precision: str = "fp32",
    ) -> None:
        self.module = module
        self.spec = spec
        self.state = state
        self.store = store
        self.runtime = runtime
        self.probe_file = probe_file
        self.machine = machine
        self.threads = threads
        # OpenVINO computes in the app's precision (its own default would pick bf16 on any bf16-capable CPU)
        self.config = {"INFERENCE_PRECISION_HINT": OPENVINO_HINTS[precision]}
        self.previous = instance_forward(module)  # an instance forward set before (None: the class's)
        self.eager = self.previous or type(module).forward.__get__(module)
        self._signature = inspect.signature(type(module).forward)
        self._processors = ov_unet.processor_kinds(module)
        self._run: Callable[[list], Any] | None = None

    # -- the call ---------------------------------------------------------------------------------
    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        try:
            bound = self._signature.bind(self.module, *args, **kwargs).arguments
        except TypeError:  # arguments this UNet does not take: torch raises the error that says which
            return self.eager(*args, **kwargs)
        tensors, why = ov_unet.call_inputs(self.spec, bound)
        why = why or self._model_changed()
        if why or not self._ready(tensors):
            if why:
                self._fell_back(why)
            return self.eager(*args, **kwargs)
        try:
            out = self._run(tensors).to(tensors[0].dtype)
        except Exception as exc:  # noqa: BLE001 - an input the compiled model refuses: torch for good
            self._give_up(f"OpenVINO could not run a call ({type(exc).__name__}: {str(exc)[:300]})", warn=True)
            return self.eager(*args, **kwargs)
        self.state.openvino_calls += 1
        if bound.get("return_dict", True):
            from diffusers.models.unets.unet_2d_condition import UNet2DConditionOutput

            return UNet2DConditionOutput(sample=out)
        return (out,)

    def _model_changed(self) -> str:
        if ov_unet.lora_active(self.module):
            return "an active LoRA (adapters change the weights per request)"
        if ov_unet.processor_kinds(self.module) != self._processors:
            return "attention processors changed since the export (IP-Adapter or an extension)"
        return ""

    def _fell_back(self, why: str) -> None:
        counts = self.state.torch_calls
        if why not in counts:
            log.info("OpenVINO engine: UNet calls with %s run in torch (not in the exported model)", why)
        counts[why] = counts.get(why, 0) + 1

    # -- first use --------------------------------------------------------------------------------
    def prepare(self) -> bool:
        """Convert (or find the stored IR) and compile now instead of on the first call; False: torch from now on."""
        if self.state.engine == "torch":
            return False
        if self._run is None:
            try:
                self._prepare()
            except Exception as exc:  # noqa: BLE001 - any conversion or compile failure: torch for good
                first = str(exc).splitlines()[0] if str(exc) else ""
                self._give_up(f"the OpenVINO export failed ({type(exc).__name__}: {first[:300]})", warn=True)
                return False
        return True

    def _ready(self, tensors: list) -> bool:
        if not self.prepare():
            return False
        if self.state.engine == "measure":
            self._measure(tensors)
        return self.state.engine == "openvino"

    def _ir_key(self) -> str:
        version = self.runtime.version().replace(".", "_") or "none"
        fingerprint = ov_unet.weights_fingerprint(self.module)
        return f"{ov_unet.model_signature(self.module)}-{fingerprint}-ov{version}-f{ov_unet.FORMAT_VERSION}"

    def _prepare(self) -> None:
        start = time.perf_counter()
        key = self._ir_key()
        xml = self.store.find(key)
        exported = xml is None
        if exported:
            log.info("OpenVINO engine: converting the UNet (once per checkpoint; about a minute for SD 1.5)")
            example = ov_unet.example_inputs(self.module, self.spec)
            xml = self.runtime.export_ir(
                ov_unet.TracedUNet.build(self.module, self.spec),
                example,
                ov_unet.dynamic_shapes(self.spec, example),
                self.store.folder(key),
                compress_to_fp16=ov_unet.fp16_exact(self.module),
            )
            self.store.trim()
        converted = time.perf_counter() - start
        compiled = self.runtime.compile_ir(xml, self.threads, {"CACHE_DIR": str(self.store.blobs), **self.config})
        self.state.precision = self.runtime.precision(compiled)
        self._run = self.runtime.runner(compiled)
        self.state.prepare_seconds = time.perf_counter() - start
        log.info(
            "OpenVINO engine: UNet ready (computes in %s) in %.1f s (%s %.1f s, compile %.1f s) from %s",
            self.state.precision,
            self.state.prepare_seconds,
            "conversion" if exported else "stored IR found in",
            converted,
            self.state.prepare_seconds - converted,
            xml.parent,
        )

    def _measure(self, tensors: list) -> None:
        """Both engines on a batch-1 slice of this call (a small latent): keep the faster, store the result."""
        side = PROBE_SIDE - PROBE_SIDE % self.spec.up_factor or self.spec.up_factor
        probe = [t[:1] for t in tensors]
        probe[0] = probe[0][..., :side, :side]
        extras = dict(zip(self.spec.extras, probe[3:])) or None

        def torch_call() -> Any:
            return self.eager(probe[0], probe[1], encoder_hidden_states=probe[2], added_cond_kwargs=extras)

        result = measure_engines(torch_call, lambda: self._run(probe))
        write_probe(self.probe_file, probe_key(self.machine, ov_unet.model_signature(self.module)), result)
        if result.openvino_faster:
            self.state.engine, self.state.reason = "openvino", f"auto: {result.describe()}"
        else:
            self._give_up(f"auto: {result.describe()}; torch is as fast or faster here")

    def _give_up(self, reason: str, warn: bool = False) -> None:
        """torch from now on for this model: the instance forward goes back, the compiled model is freed."""
        (log.warning if warn else log.info)("UNet engine: torch - %s", reason)
        self.state.engine, self.state.reason = "torch", reason
        self._run = None
        restore_forward(self.module, self.previous)


def attach_engine(
    module: Any,
    choice: EngineChoice,
    store: IRStore,
    *,
    runtime: Runtime,
    probe_file: Path | None,
    machine: str,
    threads: int,
    precision: str = "fp32",
) -> EngineState:
    """Record the choice on ``module``; for OpenVINO (or a measurement to come) set its forward to the engine."""
    detach_engine(module)
    state = EngineState(choice)
    module._webui_engine_state = state
    spec, _ = ov_unet.unet_spec(module)
    if choice.engine == "torch" or spec is None:
        return state
    engine = OpenVinoDenoiser(
        module,
        spec,
        state,
        store,
        runtime=runtime,
        probe_file=probe_file,
        machine=machine,
        threads=threads,
        precision=precision,
    )
    module._webui_engine = engine
    module.forward = engine
    return state


def detach_engine(module: Any) -> None:
    """Back to the forward the module had before the engine (after a memory-mode change, before re-tuning)."""
    if module is None:
        return
    engine = module.__dict__.pop("_webui_engine", None)
    if engine is not None:
        if module.__dict__.get("forward") is engine:
            restore_forward(module, engine.previous)
        engine._run = None
    module.__dict__.pop("_webui_engine_state", None)


def release_compiled(module: Any) -> bool:
    """Drop the compiled OpenVINO model (its own copy of the weights) but keep the engine: the next call
    compiles it again from the stored conversion (under a second). For a model parked in the RAM cache,
    whose budget counts only torch's weights. True when there was one to drop."""
    engine = module.__dict__.get("_webui_engine") if module is not None else None
    if engine is None or engine._run is None:
        return False
    engine._run = None
    return True


def engine_state(module: Any) -> EngineState | None:
    return getattr(module, "_webui_engine_state", None) if module is not None else None
