"""Apply the device choice and the speed settings to a freshly loaded pipeline, in one call.

The model manager owns one ``SpeedTuner`` and calls ``tuner.apply(pipe, family_id)`` after every
load (after the memory modes): VAE decode precision, channels_last, attention kernels, the CPU engine
(torch or OpenVINO, ``webui.speed.engine_choice``), optional compile.
Measurements (layout) are remembered per family, device and precision for the tuner's lifetime.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from webui.speed.engine_choice import ENGINE_CHOICES
from webui.speed.layout import (
    CHANNELS_LAST_CHOICES,
    LayoutDecision,
    apply_layout,
    decide_channels_last,
    describe_layout,
    time_resnet,
)

log = logging.getLogger(__name__)

ATTENTION_CHOICES = ("auto", "sdpa")
_SHORT = {"torch.float32": "fp32", "torch.float16": "fp16", "torch.bfloat16": "bf16"}


@dataclass(frozen=True)
class SpeedOptions:
    channels_last: str = "auto"  # auto (measured) / on / off
    compile: bool = False  # torch.compile of the denoiser's repeated blocks (opt-in)
    attention: str = "auto"  # auto: SDPA, or xformers on CUDA when installed and faster; sdpa: always SDPA
    cpu_engine: str = "auto"  # auto (measured per model type) / torch / openvino: what runs the UNet on a CPU

    def __post_init__(self) -> None:
        if self.channels_last not in CHANNELS_LAST_CHOICES:
            raise ValueError(f"channels_last must be one of {', '.join(CHANNELS_LAST_CHOICES)}")
        if self.attention not in ATTENTION_CHOICES:
            raise ValueError(f"attention must be one of {', '.join(ATTENTION_CHOICES)}")
        if self.cpu_engine not in ENGINE_CHOICES:
            raise ValueError(f"cpu_engine must be one of {', '.join(ENGINE_CHOICES)}")


def options_from_settings(settings: Any) -> SpeedOptions:
    """The speed options a ``webui.config.Settings`` asks for."""
    return SpeedOptions(
        channels_last=settings.channels_last,
        compile=bool(settings.compile),
        cpu_engine=getattr(settings, "cpu_engine", "auto"),
    )


@dataclass
class TuneReport:
    """What was applied to one pipeline, for the log and the UI."""

    vae: str = ""
    layout: str = ""
    attention: str = ""
    engine: str = ""
    compiled: str = ""
    notes: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        return [x for x in (self.vae, self.layout, self.attention, self.engine, self.compiled, *self.notes) if x]


class SpeedTuner:
    def __init__(
        self,
        choice: Any,  # webui.models.devices.DeviceChoice
        options: SpeedOptions = SpeedOptions(),
        *,
        measure_layout: Callable[..., tuple[float, float]] = time_resnet,
        compile_fn: Callable[..., Any] | None = None,
        choose_attention: Callable[..., str] | None = None,
        cache_dir: Path | None = None,
        openvino: Any = None,  # webui.speed.ov_engine.Runtime (tests pass fakes); None: the installed OpenVINO
    ) -> None:
        """``cache_dir``: where OpenVINO's converted models and the engine measurement are kept; without
        one the denoiser always runs in torch."""
        self.choice = choice
        self.options = options
        self._measure_layout = measure_layout
        self._compile_fn = compile_fn
        self._choose_attention = choose_attention
        self._cache_dir = Path(cache_dir) if cache_dir is not None else None
        self._openvino = openvino
        self._layouts: dict[tuple[str, str, str], dict[str, LayoutDecision]] = {}

    def apply(
        self, pipe: Any, family_id: str, *, manages_placement: bool = False, manages_attention: bool = False
    ) -> TuneReport:
        """Tune ``pipe`` in place. ``manages_placement``: an offload memory mode moves the weights
        (no layout measurement then); ``manages_attention``: a memory mode chose the attention kernels."""
        report = TuneReport(vae=self._vae(pipe))
        report.layout = self._layout(pipe, family_id, manages_placement)
        if not manages_attention and self.options.attention == "auto":
            report.attention = self._attention(pipe)
        report.engine = self._engine(pipe, manages_placement, manages_attention)
        if self.options.compile:
            report.compiled = self._compile(pipe)
        for line in report.lines():
            log.info("speed: %s", line)
        return report

    def _vae(self, pipe: Any) -> str:
        """The VAE keeps the pipeline's dtype (the pipelines' img2img encode needs that); it is marked
        to decode in fp32 where the choice says so (fp16-unsafe VAE, or the user's fp32 VAE setting)."""
        from webui.speed.vae_guard import decodes_in_fp32, mark_decode_fp32

        vae = getattr(pipe, "vae", None)
        if vae is None:
            return ""
        if self.choice.vae_precision_for(vae.config) == "fp32":
            mark_decode_fp32(vae)
        stored = _SHORT.get(str(vae.dtype), str(vae.dtype))
        if not decodes_in_fp32(vae):
            return f"VAE decodes in {stored}, checked for NaN/inf (fp32 retry)"
        if stored == "fp32":
            return "VAE decodes in fp32"
        why = "VAE precision setting" if self.choice.vae_precision == "fp32" else "this VAE overflows in fp16"
        return f"VAE decodes in fp32 ({why}; weights kept in {stored})"

    def _layout(self, pipe: Any, family_id: str, manages_placement: bool) -> str:
        choice = self.options.channels_last
        if manages_placement and choice != "off":
            return "channels_last not used: an offload mode places the weights"
        key = (family_id, self.choice.device, self.choice.precision)
        decisions = self._layouts.get(key) if choice == "auto" else None
        if decisions is None:
            decisions = decide_channels_last(pipe, choice, self._measure_layout)
            if choice == "auto":
                self._layouts[key] = decisions
        for name, decision in decisions.items():
            if decision.channels_last:
                apply_layout(pipe, True, (name,))
        return describe_layout(decisions)

    def _attention(self, pipe: Any) -> str:
        choose = self._choose_attention
        if choose is None:
            from webui.speed.attention import choose_attention as choose
        return choose(pipe, self.choice.device, self.choice.dtype)

    def _engine(self, pipe: Any, manages_placement: bool, manages_attention: bool) -> str:
        if self._cache_dir is None:
            return ""
        from webui.speed.engine_setup import set_up_engine

        state = set_up_engine(
            pipe,
            self.choice,
            self.options,
            self._cache_dir,
            runtime=self._openvino,
            manages_placement=manages_placement,
            manages_attention=manages_attention,
        )
        return state.describe() if state is not None else ""

    def _compile(self, pipe: Any) -> str:
        from webui.speed.compile import compile_denoiser, denoiser
        from webui.speed.ov_engine import engine_state

        state = engine_state(denoiser(pipe))
        if state is not None and state.engine != "torch":
            return "torch.compile not used: the UNet runs through OpenVINO (--cpu-engine openvino)"

        state = compile_denoiser(pipe, compile_fn=self._compile_fn)
        if state.failed:
            return f"torch.compile off: {state.failed}"
        return f"torch.compile on {len(state.regions)} region(s), compiled on first use per image size"
