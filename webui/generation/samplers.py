"""The sampler table: A1111 sampler names and schedule types mapped onto diffusers schedulers.

Every scheduler is built from a copy of the checkpoint's ORIGINAL scheduler config (never from a
scheduler that an earlier request modified, whose leftover keys break the next one), with the three
sigma flags always set. Samplers come in two kinds: "noise" (eps / v-prediction UNets) and "flow"
(rectified-flow models such as SD3); the same display name ("Euler") can exist in both, so lookups
go through the family's kind. Extensions add samplers and schedule types with ``register_*``.

This module imports no torch/diffusers at module level (the UI and API list names without them).

What each schedule type means here (A1111 behaviour -> diffusers setting):
  Automatic        the sampler's ``default_schedule`` (A1111 1.9+: DPM++ 2M -> Karras, DPM++ 2M SDE ->
                   Exponential ...). Samplers without one keep A1111's plain discretization, which their
                   spec's kwargs set: k-diffusion samplers sample timesteps linearly over the whole range
                   (``timestep_spacing="linspace"``; SDXL's config says "leading", so it is always set),
                   DDIM and PLMS use ``"leading"`` + the config's steps_offset (A1111's DDIM timesteps).
  Uniform, Normal  ``timestep_spacing="linspace"``
  SGM Uniform, Simple  ``"trailing"``          DDIM  ``"leading"`` (with the config's steps_offset)
  Karras, Exponential, Beta  ``use_*_sigmas=True`` (+ "linspace", so the sigma range is the full one)
  Polyexponential (rho 1), KL Optimal, Align Your Steps: custom sigmas handed to the pipeline call
                   (``call_kwargs["sigmas"]``); Euler only, the one noise scheduler that accepts sigmas.
  Flow models: Automatic = the checkpoint's shifted linear schedule; Karras/Exponential/Beta exist on
  FlowMatch Euler only. SD3 img2img/inpaint call ``scheduler.scale_noise``, which only the FlowMatch
  schedulers have, so the other flow samplers (flow-sigma DPM++ 2M, UniPC, DEIS) are txt2img-only.
Not mapped (no honest diffusers equivalent): DPM++ 2S a, DPM fast, DPM adaptive, Restart, DDIM CFG++.
"""

from __future__ import annotations

import copy
import importlib.util
import inspect
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from webui.models.families import TASKS, FamilySpec

KINDS = ("noise", "flow")
AUTOMATIC = "Automatic"
_KIND_BY_PREDICTION = {"eps": "noise", "v": "noise", "flow": "flow"}
_KIND_TEXT = {"noise": "noise-prediction models", "flow": "flow-matching models"}
_DEFAULT_SAMPLER = {"noise": "DPM++ 2M", "flow": "Euler"}
# Pre-1.9 A1111 API aliases baked the schedule into the name: k_dpmpp_2m_ka, k_dpmpp_2m_sde_exp.
_LEGACY_SUFFIXES = {"Karras": ("_ka",), "Exponential": ("_exp",)}

# (steps, sigma_min, sigma_max, family) -> the full sigma list, ending with 0.
SigmaFn = Callable[[int, float, float, FamilySpec], Sequence[float]]


class SamplerError(ValueError):
    """A sampler or schedule request that cannot work; the message lists the valid choices."""


@dataclass(frozen=True)
class SamplerSpec:
    name: str  # A1111 name, e.g. "DPM++ 2M"
    scheduler_class: str  # diffusers class name, resolved lazily
    kwargs: Mapping[str, Any]  # config overrides; every key must be an argument of the class
    default_schedule: str  # what "Automatic" means for it ("Automatic" = the plain discretization)
    kind: str  # "noise" (eps/v models) or "flow" (rectified flow models)
    aliases: tuple[str, ...] = ()
    img2img: bool = True  # usable for img2img/inpaint (flow: needs scale_noise)
    schedules: tuple[str, ...] | None = None  # schedule types it accepts (None = all of its kind)
    requires: tuple[str, ...] = ()  # Python packages it needs (checked before building)
    api_options: Mapping[str, Any] = field(default_factory=dict)  # extra "options" in GET /sdapi/v1/samplers

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise SamplerError(f"sampler {self.name!r} has kind {self.kind!r}; use one of: {', '.join(KINDS)}")
        object.__setattr__(self, "kwargs", MappingProxyType(dict(self.kwargs)))
        object.__setattr__(self, "api_options", MappingProxyType(dict(self.api_options)))


@dataclass(frozen=True)
class ScheduleType:
    name: str  # "Karras"
    label: str  # A1111 label
    aliases: tuple[str, ...]  # A1111 API ids first: "karras", "sgm_uniform" ...
    kwargs: Mapping[str, Any]  # config overrides (ignored by classes that lack the argument)
    kinds: tuple[str, ...] = ("noise",)  # which sampler kinds it applies to
    families: tuple[str, ...] | None = None  # family ids it is made for (None = any)
    custom_sigmas: SigmaFn | None = None  # sigmas passed to the pipeline call instead of set by the config
    requires: tuple[str, ...] = ()
    default_rho: float = -1.0  # for GET /sdapi/v1/schedulers
    need_inner_model: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "kwargs", MappingProxyType(dict(self.kwargs)))

    @property
    def api_name(self) -> str:
        return self.aliases[0] if self.aliases else self.name.lower().replace(" ", "_")


@dataclass(frozen=True)
class BuiltSampler:
    scheduler: Any  # a fresh diffusers scheduler instance
    call_kwargs: Mapping[str, Any]  # extra pipeline-call kwargs, e.g. {"sigmas": [...]} for Align Your Steps
    sampler_name: str  # canonical A1111 name
    # The schedule used, as A1111 records it: the resolved type ("DPM++ 2M" + Automatic -> "Karras"), or
    # "Automatic" for samplers whose default is the plain discretization. Write "Schedule type: <x>" in the
    # infotext unless it is "Automatic" (A1111 omits it then, and its parser defaults to Automatic).
    schedule: str


# --- custom sigma schedules ----------------------------------------------------------------------


def _linspace(start: float, stop: float, n: int) -> list[float]:
    if n == 1:
        return [start]
    return [start + (stop - start) * i / (n - 1) for i in range(n)]


def _polyexponential(steps: int, sigma_min: float, sigma_max: float, family: FamilySpec) -> list[float]:
    """k-diffusion's polyexponential with rho 1: log-sigma falls linearly from max to min."""
    lo, hi = math.log(sigma_min), math.log(sigma_max)
    return [math.exp(lo + r * (hi - lo)) for r in _linspace(1.0, 0.0, steps)] + [0.0]


def _kl_optimal(steps: int, sigma_min: float, sigma_max: float, family: FamilySpec) -> list[float]:
    """The KL-optimal schedule of the Align Your Steps paper: linear in arctan(sigma)."""
    a_min, a_max = math.atan(sigma_min), math.atan(sigma_max)
    return [math.tan(t * a_min + (1.0 - t) * a_max) for t in _linspace(0.0, 1.0, steps)] + [0.0]


_AYS_KEYS = {  # A1111 uses the SDXL list for SDXL models and the SD1.5 list for the rest
    "sd15": "StableDiffusionSigmas",
    "sd2": "StableDiffusionSigmas",
    "sdxl": "StableDiffusionXLSigmas",
    "sdxl_refiner": "StableDiffusionXLSigmas",
}


def _align_your_steps(steps: int, sigma_min: float, sigma_max: float, family: FamilySpec) -> list[float]:
    """NVIDIA's 10-step AYS sigmas (diffusers' table, ending at sigma_min), log-linearly resampled."""
    import numpy as np
    from diffusers.schedulers.scheduling_utils import AysSchedules

    base = [*AysSchedules[_AYS_KEYS[family.id]][:-1], sigma_min]
    if steps != len(base):
        ys = np.log(np.asarray(base[::-1]))
        resampled = np.interp(np.linspace(0, 1, steps), np.linspace(0, 1, len(base)), ys)
        base = [float(s) for s in np.exp(resampled)[::-1]]
    return [*base, 0.0]


# --- the built-in tables -------------------------------------------------------------------------

_FLAGS_OFF = {"use_karras_sigmas": False, "use_exponential_sigmas": False, "use_beta_sigmas": False}

_K = {"timestep_spacing": "linspace"}  # A1111's default discretization for k-diffusion samplers
_KARRAS = {**_K, "use_karras_sigmas": True}
_EXPONENTIAL = {**_K, "use_exponential_sigmas": True}
_BETA = {**_K, "use_beta_sigmas": True}
_TRAILING = {"timestep_spacing": "trailing"}
_LEADING = {"timestep_spacing": "leading"}
_AYS = tuple(_AYS_KEYS)

# name, API aliases (A1111 id first), kwargs, kinds, families, custom sigmas, requires, default_rho, need_inner_model
_SCHEDULE_ROWS: tuple[tuple, ...] = (  # A1111's order
    (AUTOMATIC, ("automatic",), {}, KINDS, None, None, (), -1.0, False),
    ("Uniform", ("uniform",), _K, ("noise",), None, None, (), -1.0, True),
    ("Karras", ("karras",), _KARRAS, KINDS, None, None, (), 7.0, False),
    ("Exponential", ("exponential",), _EXPONENTIAL, KINDS, None, None, (), -1.0, False),
    ("Polyexponential", ("polyexponential",), {}, ("noise",), None, _polyexponential, (), 1.0, False),
    ("SGM Uniform", ("sgm_uniform", "SGMUniform"), _TRAILING, ("noise",), None, None, (), -1.0, True),
    ("KL Optimal", ("kl_optimal",), {}, ("noise",), None, _kl_optimal, (), -1.0, False),
    ("Align Your Steps", ("align_your_steps", "AYS"), {}, ("noise",), _AYS, _align_your_steps, (), -1.0, False),
    ("Simple", ("simple",), _TRAILING, ("noise",), None, None, (), -1.0, True),
    ("Normal", ("normal",), _K, ("noise",), None, None, (), -1.0, True),
    ("DDIM", ("ddim",), _LEADING, ("noise",), None, None, (), -1.0, True),
    ("Beta", ("beta",), _BETA, KINDS, None, None, ("scipy",), -1.0, True),
)

_SPACING = (AUTOMATIC, "Uniform", "SGM Uniform", "Simple", "Normal", "DDIM")  # timestep_spacing only
_FLAGGED = (*_SPACING, "Karras", "Exponential", "Beta")  # + the three sigma flags
_AUTO = (AUTOMATIC,)
_FLOW_EULER = (AUTOMATIC, "Karras", "Exponential", "Beta")
_DPM = "DPMSolverMultistepScheduler"
_UNIPC = "UniPCMultistepScheduler"
_DEIS = "DEISMultistepScheduler"
_2M = {**_K, "algorithm_type": "dpmsolver++", "solver_order": 2, "solver_type": "midpoint", "use_flow_sigmas": False}
_2M_SDE = {**_2M, "algorithm_type": "sde-dpmsolver++"}
_3M_SDE = {**_2M_SDE, "solver_order": 3}
_HEUN_SDE = {**_2M_SDE, "solver_type": "heun"}
_EULER = {**_K, "interpolation_type": "linear"}
_EULER_A_ALIASES = ("k_euler_a", "k_euler_ancestral")
_FM_EULER = {"stochastic_sampling": False}
_FM_EULER_ALIASES = ("k_euler", "FlowMatch Euler", "flowmatch_euler")
_DDIM = {**_LEADING, "set_alpha_to_one": False, "clip_sample": False}
_PLMS = {**_LEADING, "skip_prk_steps": True, "set_alpha_to_one": False}
# A1111's UniPC: variant bh1, order 3, lower order final, time-uniform steps ending at t=1/N, i.e. sigma_min
# (bh1 stepping to sigma 0 gives NaN in diffusers).
_UNIPC_A1111 = {**_K, "solver_order": 3, "solver_type": "bh1", "lower_order_final": True, "use_flow_sigmas": False}
_UNIPC_A1111["final_sigmas_type"] = "sigma_min"
_FLOW = {"use_flow_sigmas": True, "prediction_type": "flow_prediction", "solver_order": 2}
_SDE, _2ND, _ENSD = {"brownian_noise": True}, {"second_order": True}, {"uses_ensd": True}

# name, class, kwargs, default schedule, aliases, schedules, img2img, requires, API options
_NOISE_ROWS: tuple[tuple, ...] = (  # A1111 1.10's order, then DEIS (Forge)
    ("DPM++ 2M", _DPM, _2M, "Karras", ("k_dpmpp_2m",), _FLAGGED, True, (), {}),
    ("DPM++ SDE", "DPMSolverSDEScheduler", _K, "Karras", ("k_dpmpp_sde",), _FLAGGED, True, ("torchsde",), _SDE | _2ND),
    ("DPM++ 2M SDE", _DPM, _2M_SDE, "Exponential", ("k_dpmpp_2m_sde",), _FLAGGED, True, (), _SDE),
    ("DPM++ 2M SDE Heun", _DPM, _HEUN_SDE, "Exponential", ("k_dpmpp_2m_sde_heun",), _FLAGGED, True, (), _SDE),
    ("DPM++ 3M SDE", _DPM, _3M_SDE, "Exponential", ("k_dpmpp_3m_sde",), _FLAGGED, True, (), _SDE),
    ("Euler a", "EulerAncestralDiscreteScheduler", _K, AUTOMATIC, _EULER_A_ALIASES, _SPACING, True, (), _ENSD),
    ("Euler", "EulerDiscreteScheduler", _EULER, AUTOMATIC, ("k_euler",), None, True, (), {}),
    ("LMS", "LMSDiscreteScheduler", _K, AUTOMATIC, ("k_lms",), _FLAGGED, True, ("scipy",), {}),
    ("Heun", "HeunDiscreteScheduler", _K, AUTOMATIC, ("k_heun",), _FLAGGED, True, (), _2ND),
    ("DPM2", "KDPM2DiscreteScheduler", _K, "Karras", ("k_dpm_2",), _FLAGGED, True, (), _2ND),
    ("DPM2 a", "KDPM2AncestralDiscreteScheduler", _K, "Karras", ("k_dpm_2_a",), _FLAGGED, True, (), _2ND | _ENSD),
    ("DDIM", "DDIMScheduler", _DDIM, AUTOMATIC, ("ddim",), _SPACING, True, (), {}),
    ("PLMS", "PNDMScheduler", _PLMS, AUTOMATIC, ("plms",), _SPACING, True, (), {}),
    ("UniPC", _UNIPC, _UNIPC_A1111, AUTOMATIC, ("unipc",), _FLAGGED, True, (), {}),
    ("LCM", "LCMScheduler", {}, AUTOMATIC, ("k_lcm",), _AUTO, True, (), {}),
    ("DEIS", _DEIS, {**_K, "use_flow_sigmas": False}, AUTOMATIC, ("deis",), _FLAGGED, True, (), {}),
)
_FLOW_ROWS: tuple[tuple, ...] = (  # only FlowMatch schedulers have scale_noise (img2img/inpaint)
    ("Euler", "FlowMatchEulerDiscreteScheduler", _FM_EULER, AUTOMATIC, _FM_EULER_ALIASES, _FLOW_EULER, True, (), {}),
    ("Heun", "FlowMatchHeunDiscreteScheduler", {}, AUTOMATIC, ("k_heun", "FlowMatch Heun"), _AUTO, True, (), {}),
    ("DPM++ 2M", _DPM, {**_FLOW, "algorithm_type": "dpmsolver++"}, AUTOMATIC, ("k_dpmpp_2m",), _AUTO, False, (), {}),
    ("UniPC", _UNIPC, {**_FLOW, "solver_type": "bh2"}, AUTOMATIC, ("unipc",), _AUTO, False, (), {}),
    ("DEIS", _DEIS, _FLOW, AUTOMATIC, ("deis",), _AUTO, False, (), {}),
)


def builtin_schedules() -> list[ScheduleType]:
    """The built-in schedule types, in A1111's order (fresh objects each call)."""
    return [
        ScheduleType(name, name, aliases, kwargs, kinds, families, sigmas, requires, rho, inner)
        for name, aliases, kwargs, kinds, families, sigmas, requires, rho, inner in _SCHEDULE_ROWS
    ]


def builtin_samplers() -> list[SamplerSpec]:
    """The built-in samplers: the noise kind in A1111's order, then the flow kind."""
    return [
        SamplerSpec(name, cls, kwargs, default, kind, aliases, img2img, schedules, requires, options)
        for kind, rows in (("noise", _NOISE_ROWS), ("flow", _FLOW_ROWS))
        for name, cls, kwargs, default, aliases, schedules, img2img, requires, options in rows
    ]


def kind_of(family: FamilySpec) -> str:
    """Which sampler kind a family uses: "flow" for rectified-flow models, "noise" otherwise."""
    try:
        return _KIND_BY_PREDICTION[family.prediction]
    except KeyError:
        raise SamplerError(
            f"family {family.label!r} has prediction {family.prediction!r}; expected one of: "
            f"{', '.join(_KIND_BY_PREDICTION)}"
        ) from None


def _choices(names: Iterable[str]) -> str:
    return ", ".join(names) or "(none)"


class BuiltinSamplers:
    """Our own samplers, registered through ``webui_register_samplers`` exactly as an extension's are."""

    def webui_register_samplers(self, table: SamplerTable) -> None:
        for spec in builtin_samplers():
            table.register_sampler(spec)


class SamplerTable:
    """Samplers (per kind) and schedule types by name; lookups are case-insensitive and accept aliases."""

    def __init__(
        self, samplers: Iterable[SamplerSpec] | None = None, schedules: Iterable[ScheduleType] | None = None
    ) -> None:
        self._samplers: dict[str, dict[str, SamplerSpec]] = {kind: {} for kind in KINDS}
        self._sampler_keys: dict[str, dict[str, str]] = {kind: {} for kind in KINDS}
        self._schedules: dict[str, ScheduleType] = {}
        self._schedule_keys: dict[str, str] = {}
        schedules = list(builtin_schedules() if schedules is None else schedules)
        if not any(s.name == AUTOMATIC for s in schedules):
            schedules.insert(0, builtin_schedules()[0])
        for schedule in schedules:
            self.register_schedule(schedule)
        for spec in builtin_samplers() if samplers is None else samplers:
            self.register_sampler(spec)

    # --- registration (extensions) ---

    def register_sampler(self, spec: SamplerSpec) -> None:
        """Add a sampler for its kind; a name or alias already taken in that kind raises."""
        keys = self._sampler_keys[spec.kind]
        new = _keys(spec.name, *spec.aliases)
        for key in new:
            if key in keys:
                raise SamplerError(
                    f"sampler name or alias {key!r} of {spec.name!r} is already used by {keys[key]!r} "
                    f"for {_KIND_TEXT[spec.kind]}; register it under another name"
                )
        self._samplers[spec.kind][spec.name] = spec
        keys.update(dict.fromkeys(new, spec.name))

    def register_schedule(self, spec: ScheduleType) -> None:
        """Add a schedule type; a name, label or alias already taken raises."""
        bad_kinds = [k for k in spec.kinds if k not in KINDS]
        if bad_kinds:
            raise SamplerError(f"schedule type {spec.name!r} has kinds {bad_kinds}; use: {', '.join(KINDS)}")
        new = _keys(spec.name, spec.label, *spec.aliases)
        for key in new:
            if key in self._schedule_keys:
                raise SamplerError(
                    f"schedule type name or alias {key!r} of {spec.name!r} is already used by "
                    f"{self._schedule_keys[key]!r}; register it under another name"
                )
        self._schedules[spec.name] = spec
        self._schedule_keys.update(dict.fromkeys(new, spec.name))

    # --- listing ---

    def sampler_names(self, kind: str | None = None) -> list[str]:
        """All sampler names in A1111's order (both kinds unless ``kind`` is given; duplicates once)."""
        return list(dict.fromkeys(name for k in _kinds(kind) for name in self._samplers[k]))

    def schedule_names(self) -> list[str]:
        return list(self._schedules)

    def sampler(self, name: str, kind: str = "noise") -> SamplerSpec:
        """The spec for a name or alias in ``kind`` (a legacy schedule suffix is ignored)."""
        spec, _ = self._find(name, _kinds(kind))
        if spec is None:
            raise SamplerError(f"unknown sampler {name!r}; choose one of: {_choices(self.sampler_names(kind))}")
        return spec

    def schedule(self, name: str) -> ScheduleType:
        """A schedule type by name, label or alias; "" means Automatic."""
        key = name.strip().lower() or AUTOMATIC.lower()
        if key not in self._schedule_keys:
            raise SamplerError(f"unknown schedule type {name!r}; choose one of: {_choices(self._schedules)}")
        return self._schedules[self._schedule_keys[key]]

    def default_sampler(self, family: FamilySpec) -> str:
        """A1111's default for noise models ("DPM++ 2M"), "Euler" for flow models."""
        kind = kind_of(family)
        names = list(self._samplers[kind])
        if not names:
            raise SamplerError(f"no sampler is registered for {_KIND_TEXT[kind]} ({family.label})")
        return _DEFAULT_SAMPLER[kind] if _DEFAULT_SAMPLER[kind] in names else names[0]

    def samplers_for(self, family: FamilySpec, task: str) -> list[str]:
        """The samplers that work for this family and task (SD3 img2img/inpaint: those with scale_noise)."""
        _check_task(task)
        specs = self._samplers[kind_of(family)].values()
        return [s.name for s in specs if task == "txt2img" or s.img2img]

    def schedules_for(self, family: FamilySpec, sampler_name: str) -> list[str]:
        """The schedule types this sampler accepts on this family, Automatic first."""
        spec, _ = self._find(sampler_name, (kind_of(family),))
        if spec is None:
            raise self._unknown_sampler(family, sampler_name, self.sampler_names(kind_of(family)))
        return [s.name for s in self._schedules.values() if _fits(spec, s, family)]

    # --- resolving ---

    def resolve(
        self, sampler_name: str, schedule: str = "", *, kind: str | None = None
    ) -> tuple[SamplerSpec, ScheduleType]:
        """Canonical sampler and schedule for names as users, infotexts and API clients write them.

        Case-insensitive; aliases ("k_euler_a") and pre-1.9 combined names ("DPM++ 2M Karras",
        "k_dpmpp_2m_sde_exp") work. A schedule given explicitly wins over one in the name; Automatic
        resolves to the sampler's default. Without ``kind``, noise samplers are tried before flow ones.
        """
        spec, in_name = self._find(sampler_name, _kinds(kind))
        if spec is None:
            raise SamplerError(f"unknown sampler {sampler_name!r}; choose one of: {_choices(self.sampler_names(kind))}")
        chosen = self._pick_schedule(spec, schedule, in_name)
        valid = [s.name for s in self._schedules.values() if _fits(spec, s, None)]
        if chosen.name not in valid:
            raise _bad_schedule(chosen, spec, "", valid)
        return spec, chosen

    def check(
        self, family: FamilySpec, task: str, sampler_name: str, schedule: str = ""
    ) -> tuple[SamplerSpec, ScheduleType]:
        """Like resolve, for one family and task; "" = the family's default sampler. Raises SamplerError."""
        _check_task(task)
        kind = kind_of(family)
        valid = self.samplers_for(family, task)
        spec, in_name = self._find(sampler_name or self.default_sampler(family), (kind,))
        if spec is None:
            raise self._unknown_sampler(family, sampler_name, valid)
        if spec.name not in valid:
            raise SamplerError(
                f"Sampler {spec.name!r} cannot do {task} on {family.label}; choose one of: {_choices(valid)}"
            )
        chosen = self._pick_schedule(spec, schedule, in_name)
        fitting = self.schedules_for(family, spec.name)
        if chosen.name not in fitting:
            raise _bad_schedule(chosen, spec, f" on {family.label}", fitting)
        return spec, chosen

    def _find(self, name: str, kinds: Iterable[str]) -> tuple[SamplerSpec | None, ScheduleType | None]:
        """(spec, schedule named in a legacy suffix) or (None, None)."""
        key = name.strip().lower()
        kinds = tuple(kinds)
        for kind in kinds:
            if key in self._sampler_keys[kind]:
                return self._samplers[kind][self._sampler_keys[kind][key]], None
        for schedule, suffix in self._suffixes():
            base = key[: -len(suffix)].strip() if key.endswith(suffix) else ""
            for kind in kinds:
                if base in self._sampler_keys[kind]:
                    return self._samplers[kind][self._sampler_keys[kind][base]], schedule
        return None, None

    def _suffixes(self) -> list[tuple[ScheduleType, str]]:
        pairs = [
            (s, suffix)
            for s in self._schedules.values()
            if s.name != AUTOMATIC
            for suffix in {f" {s.name.lower()}", f" {s.label.lower()}", *_LEGACY_SUFFIXES.get(s.name, ())}
        ]
        return sorted(pairs, key=lambda pair: -len(pair[1]))

    def _pick_schedule(self, spec: SamplerSpec, schedule: str, in_name: ScheduleType | None) -> ScheduleType:
        chosen = self.schedule(schedule)
        if chosen.name == AUTOMATIC and in_name is not None:
            chosen = in_name
        if chosen.name == AUTOMATIC and spec.default_schedule != AUTOMATIC:
            chosen = self.schedule(spec.default_schedule)
        return chosen

    def _unknown_sampler(self, family: FamilySpec, name: str, valid: list[str]) -> SamplerError:
        kind = kind_of(family)
        other, _ = self._find(name, [k for k in KINDS if k != kind])
        if other is not None:
            return SamplerError(
                f"Sampler {other.name!r} does not work with {family.label} ({_KIND_TEXT[kind]}); "
                f"choose one of: {_choices(valid)}"
            )
        return SamplerError(f"Unknown sampler {name!r} for {family.label}; choose one of: {_choices(valid)}")

    # --- building ---

    def build(
        self,
        original_config: Mapping[str, Any],
        family: FamilySpec,
        task: str,
        sampler_name: str,
        schedule: str = "",
        *,
        steps: int | None = None,
        shift: float | None = None,
        seed: int | None = None,
    ) -> BuiltSampler:
        """A fresh scheduler built from a copy of the checkpoint's original scheduler config.

        ``shift`` (flow models; 0/None = the checkpoint's) sets shift / flow_shift. ``seed`` seeds the
        Brownian-tree noise of DPM++ SDE (which otherwise draws from the global RNG). ``steps`` is needed
        by the custom-sigma schedule types. Pass ``call_kwargs`` on to the pipeline call.
        """
        spec, chosen = self.check(family, task, sampler_name, schedule)
        _require_packages(spec, chosen)
        cls = _scheduler_class(spec)
        accepted = _init_params(cls)
        unknown = sorted(set(spec.kwargs) - accepted)
        if unknown:
            raise SamplerError(
                f"sampler {spec.name!r} sets {unknown}, which {spec.scheduler_class} does not take; "
                f"fix the sampler spec (valid: {_choices(sorted(accepted))})"
            )
        overrides = {**_FLAGS_OFF, **spec.kwargs, **chosen.kwargs}
        if spec.kind == "flow":
            value = float(shift or original_config.get("shift") or original_config.get("flow_shift") or 1.0)
            overrides.update(shift=value, flow_shift=value)
        elif "prediction_type" in original_config:  # v-prediction checkpoints stay v-prediction
            overrides["prediction_type"] = original_config["prediction_type"]
        if seed is not None:
            overrides["noise_sampler_seed"] = seed
        config = {k: v for k, v in copy.deepcopy(dict(original_config)).items() if k in accepted}
        config.update({k: v for k, v in overrides.items() if k in accepted})
        try:
            scheduler = cls.from_config(config)
        except ImportError as exc:
            raise SamplerError(f"sampler {spec.name!r} cannot be built: {exc}; install the package it names") from exc
        call_kwargs = _call_kwargs(scheduler, spec, chosen, family, steps)
        return BuiltSampler(scheduler, MappingProxyType(call_kwargs), spec.name, chosen.name)


def _keys(*names: str) -> list[str]:
    keys = list(dict.fromkeys(n.strip().lower() for n in names))
    if "" in keys:
        raise SamplerError(f"sampler and schedule names and aliases must not be empty (got {names})")
    return keys


def _kinds(kind: str | None) -> tuple[str, ...]:
    if kind is None:
        return KINDS
    if kind not in KINDS:
        raise SamplerError(f"unknown sampler kind {kind!r}; choose one of: {', '.join(KINDS)}")
    return (kind,)


def _check_task(task: str) -> None:
    if task not in TASKS:
        raise SamplerError(f"unknown task {task!r}; choose one of: {', '.join(TASKS)}")


def _fits(spec: SamplerSpec, schedule: ScheduleType, family: FamilySpec | None) -> bool:
    if spec.kind not in schedule.kinds:
        return False
    if schedule.name != AUTOMATIC and spec.schedules is not None and schedule.name not in spec.schedules:
        return False
    return family is None or schedule.families is None or family.id in schedule.families


def _bad_schedule(chosen: ScheduleType, spec: SamplerSpec, where: str, valid: list[str]) -> SamplerError:
    return SamplerError(
        f"Schedule type {chosen.name!r} does not work with sampler {spec.name!r}{where}; "
        f"choose one of: {_choices(valid)}"
    )


def _require_packages(spec: SamplerSpec, schedule: ScheduleType) -> None:
    for package in (*spec.requires, *schedule.requires):
        if importlib.util.find_spec(package) is None:
            raise SamplerError(
                f"Sampler {spec.name!r} with schedule type {schedule.name!r} needs the Python package "
                f"{package!r}, which is not installed; install it (pip install {package}) or choose another"
            )


def _scheduler_class(spec: SamplerSpec) -> type:
    import diffusers

    cls = getattr(diffusers, spec.scheduler_class, None)
    if not isinstance(cls, type) or not hasattr(cls, "from_config"):
        raise SamplerError(
            f"sampler {spec.name!r} names {spec.scheduler_class!r}, which is not a diffusers scheduler class; "
            "fix the sampler spec"
        )
    return cls


def _init_params(cls: type) -> set[str]:
    return {name for name in inspect.signature(cls.__init__).parameters if name != "self"}


def _call_kwargs(
    scheduler: Any, spec: SamplerSpec, schedule: ScheduleType, family: FamilySpec, steps: int | None
) -> dict[str, Any]:
    if schedule.custom_sigmas is None:
        return {}
    if "sigmas" not in inspect.signature(scheduler.set_timesteps).parameters:
        raise SamplerError(
            f"Schedule type {schedule.name!r} needs a scheduler that takes custom sigmas, and "
            f"{spec.name!r} ({spec.scheduler_class}) does not; choose Euler or another schedule type"
        )
    if not steps or steps < 1:
        raise SamplerError(f"Schedule type {schedule.name!r} needs the step count; pass steps= (1 or more)")
    alphas = scheduler.alphas_cumprod
    sigma_min = float(((1 - alphas[0]) / alphas[0]) ** 0.5)
    sigma_max = float(((1 - alphas[-1]) / alphas[-1]) ** 0.5)
    return {"sigmas": [float(s) for s in schedule.custom_sigmas(steps, sigma_min, sigma_max, family)]}


# --- A1111 API views ------------------------------------------------------------------------------


def samplers_json(table: SamplerTable, family: FamilySpec | None = None, task: str = "txt2img") -> list[dict]:
    """GET /sdapi/v1/samplers: [{"name", "aliases", "options"}]; option values are strings, as in A1111."""
    kind = None if family is None else kind_of(family)
    names = table.sampler_names() if family is None else table.samplers_for(family, task)
    items = []
    for name in names:
        spec = table.sampler(name, kind or ("noise" if name in table.sampler_names("noise") else "flow"))
        options = {}
        if spec.default_schedule != AUTOMATIC:
            options["scheduler"] = table.schedule(spec.default_schedule).api_name
        options.update((key, str(value)) for key, value in spec.api_options.items())
        items.append({"name": spec.name, "aliases": list(spec.aliases), "options": options})
    return items


def schedulers_json(table: SamplerTable) -> list[dict]:
    """GET /sdapi/v1/schedulers: [{"name", "label", "aliases", "default_rho", "need_inner_model"}]."""
    return [
        {
            "name": s.api_name,
            "label": s.label,
            "aliases": list(s.aliases[1:]) or None,
            "default_rho": s.default_rho,
            "need_inner_model": s.need_inner_model,
        }
        for s in (table.schedule(name) for name in table.schedule_names())
    ]
