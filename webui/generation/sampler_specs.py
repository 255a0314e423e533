"""The sampler and schedule-type records, and the built-in rows (A1111 names -> diffusers schedulers).

Pure data: no torch or diffusers at import (the UI and API list names without them). The table
that resolves and builds them is ``webui.generation.samplers``, which re-exports these names.

A schedule type runs on a sampler in one of two ways:
  config  its ``kwargs`` set the scheduler's own options (``timestep_spacing``, ``use_karras_sigmas``
          ...), for the schedule types the sampler lists in ``config_schedules``;
  sigmas  its ``custom_sigmas`` function computes the sigma list from the model's noise levels and
          our scheduler subclass installs it (``webui.generation.sigma_schedulers``), for every other
          one, where the diffusers class is one we can give custom sigmas (``SIGMA_CAPABLE``).
What cannot run either way (DDIM and PLMS step on their own timesteps, as in A1111; Align Your
Steps exists for SD 1.5/2 and SDXL only) falls back to the sampler's own schedule with a warning.

What each schedule type means on the config path (A1111 behaviour -> diffusers setting):
  Automatic        the sampler's ``default_schedule`` (A1111 1.9+: DPM++ 2M -> Karras, DPM++ 2M SDE ->
                   Exponential ...). Samplers without one keep A1111's plain discretization, which their
                   spec's kwargs set: k-diffusion samplers sample timesteps linearly over the whole range
                   (``timestep_spacing="linspace"``; SDXL's config says "leading", so it is always set),
                   DDIM and PLMS use ``"leading"`` + the config's steps_offset (A1111's DDIM timesteps).
  Uniform, Normal  ``timestep_spacing="linspace"``
  SGM Uniform, Simple  ``"trailing"``          DDIM  ``"leading"`` (with the config's steps_offset)
  Karras, Exponential, Beta  ``use_*_sigmas=True`` (+ "linspace", so the sigma range is the full one)
Flow models (SD3): Automatic = the checkpoint's shifted linear schedule; FlowMatch Euler takes Karras,
Exponential and Beta as options, every other type runs on custom sigmas over the shifted time grid.
Not mapped (no honest diffusers equivalent): DPM++ 2S a, DPM fast, DPM adaptive, Restart, DDIM CFG++.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from webui.generation import sigma_schedules as sig
from webui.generation.sigma_schedules import SigmaFn

KINDS = ("noise", "flow")
AUTOMATIC = "Automatic"


class SamplerError(ValueError):
    """A sampler or schedule request that cannot work; the message lists the valid choices."""


class UnknownSampler(SamplerError):
    """A sampler name that no kind knows (A1111's API answers 404); ``valid`` lists the names."""

    def __init__(self, message: str, valid: list[str]) -> None:
        super().__init__(message)
        self.valid = list(valid)


@dataclass(frozen=True)
class SamplerSpec:
    name: str  # A1111 name, e.g. "DPM++ 2M"
    scheduler_class: str  # diffusers class name, resolved lazily
    kwargs: Mapping[str, Any]  # config overrides; every key must be an argument of the class
    default_schedule: str  # what "Automatic" means for it ("Automatic" = the plain discretization)
    kind: str  # "noise" (eps/v models) or "flow" (rectified flow models)
    aliases: tuple[str, ...] = ()
    img2img: bool = True  # usable for img2img/inpaint (flow: needs scale_noise)
    schedules: tuple[str, ...] | None = None  # schedule types it accepts (None = every one it can run)
    requires: tuple[str, ...] = ()  # Python packages it needs (checked before building)
    api_options: Mapping[str, Any] = field(default_factory=dict)  # extra "options" in GET /sdapi/v1/samplers
    # schedule types set through their config kwargs (None = every one that has kwargs); the others run
    # on custom sigmas where the class can take them
    config_schedules: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise SamplerError(f"sampler {self.name!r} has kind {self.kind!r}; use one of: {', '.join(KINDS)}")
        object.__setattr__(self, "kwargs", MappingProxyType(dict(self.kwargs)))
        object.__setattr__(self, "api_options", MappingProxyType(dict(self.api_options)))

    @property
    def takes_custom_sigmas(self) -> bool:
        return self.scheduler_class in sig.SIGMA_CAPABLE


@dataclass(frozen=True)
class ScheduleType:
    name: str  # "Karras"
    label: str  # A1111 label
    aliases: tuple[str, ...]  # A1111 API ids first: "karras", "sgm_uniform" ...
    kwargs: Mapping[str, Any]  # config overrides, for the samplers that list it in config_schedules
    kinds: tuple[str, ...] = ("noise",)  # which sampler kinds it applies to
    families: tuple[str, ...] | None = None  # family ids it is made for (None = any)
    custom_sigmas: SigmaFn | None = None  # (steps, ModelSigmas) -> steps + 1 sigmas ending with 0
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
    call_kwargs: Mapping[str, Any]  # extra pipeline-call kwargs (none for the built-in samplers)
    sampler_name: str  # canonical A1111 name of the sampler that runs
    # The schedule used, as A1111 records it: the resolved type ("DPM++ 2M" + Automatic -> "Karras"), or
    # "Automatic" for samplers whose default is the plain discretization. After a fallback it is the one
    # that ran, not the one requested.
    schedule: str
    warnings: tuple[str, ...] = ()  # what was asked for and could not run, and what ran instead


@dataclass(frozen=True)
class SamplerChoice:
    """What runs for a request: the sampler, the schedule, how the schedule is set, and any fallback."""

    spec: SamplerSpec
    schedule: ScheduleType
    how: str  # "config" (the scheduler's own options) or "sigmas" (custom sigmas)
    warnings: tuple[str, ...] = ()


# --- the built-in tables -------------------------------------------------------------------------

_K = {"timestep_spacing": "linspace"}  # A1111's default discretization for k-diffusion samplers
_KARRAS = {**_K, "use_karras_sigmas": True}
_EXPONENTIAL = {**_K, "use_exponential_sigmas": True}
_BETA = {**_K, "use_beta_sigmas": True}
_TRAILING = {"timestep_spacing": "trailing"}
_LEADING = {"timestep_spacing": "leading"}
_BOTH = KINDS
_AYS = "the families with an AYS table"  # resolved by builtin_schedules (sigma_schedules.ays_families)

# name, API aliases (A1111 id first), kwargs, kinds, families, sigmas, requires, default_rho, need_inner_model
_SCHEDULE_ROWS: tuple[tuple, ...] = (  # A1111's order
    (AUTOMATIC, ("automatic",), {}, _BOTH, None, None, (), -1.0, False),
    ("Uniform", ("uniform",), _K, _BOTH, None, sig.uniform, (), -1.0, True),
    ("Karras", ("karras",), _KARRAS, _BOTH, None, sig.karras, (), 7.0, False),
    ("Exponential", ("exponential",), _EXPONENTIAL, _BOTH, None, sig.exponential, (), -1.0, False),
    ("Polyexponential", ("polyexponential",), {}, _BOTH, None, sig.polyexponential, (), 1.0, False),
    ("SGM Uniform", ("sgm_uniform", "SGMUniform"), _TRAILING, _BOTH, None, sig.sgm_uniform, (), -1.0, True),
    ("KL Optimal", ("kl_optimal",), {}, _BOTH, None, sig.kl_optimal, (), -1.0, False),
    ("Align Your Steps", ("align_your_steps", "AYS"), {}, ("noise",), _AYS, sig.align_your_steps, (), -1.0, False),
    ("Simple", ("simple",), _TRAILING, _BOTH, None, sig.simple, (), -1.0, True),
    ("Normal", ("normal",), _K, _BOTH, None, sig.normal, (), -1.0, True),
    ("DDIM", ("ddim",), _LEADING, _BOTH, None, sig.ddim, (), -1.0, True),
    ("Beta", ("beta",), _BETA, _BOTH, None, sig.beta, ("scipy",), -1.0, True),
)

_SPACING = (AUTOMATIC, "Uniform", "SGM Uniform", "Simple", "Normal", "DDIM")  # timestep_spacing only
_FLAGGED = (*_SPACING, "Karras", "Exponential", "Beta")  # + the three sigma flags
_FLOW_FLAGS = (AUTOMATIC, "Karras", "Exponential", "Beta")  # FlowMatch Euler's own options
_NONE = (AUTOMATIC,)  # every other schedule type on custom sigmas
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
_FLOW_2M = {**_FLOW, "algorithm_type": "dpmsolver++"}
_FLOW_2M_SDE = {**_FLOW, "algorithm_type": "sde-dpmsolver++", "solver_type": "midpoint"}
_SDE, _2ND, _ENSD = {"brownian_noise": True}, {"second_order": True}, {"uses_ensd": True}

# name, class, kwargs, default schedule, aliases, schedules, config schedules, requires, API options
_NOISE_ROWS: tuple[tuple, ...] = (  # A1111 1.10's order, then DEIS (Forge)
    ("DPM++ 2M", _DPM, _2M, "Karras", ("k_dpmpp_2m",), None, _FLAGGED, (), {}),
    ("DPM++ SDE", "DPMSolverSDEScheduler", _K, "Karras", ("k_dpmpp_sde",), None, _FLAGGED, ("torchsde",), _SDE | _2ND),
    ("DPM++ 2M SDE", _DPM, _2M_SDE, "Exponential", ("k_dpmpp_2m_sde",), None, _FLAGGED, (), _SDE),
    ("DPM++ 2M SDE Heun", _DPM, _HEUN_SDE, "Exponential", ("k_dpmpp_2m_sde_heun",), None, _FLAGGED, (), _SDE),
    ("DPM++ 3M SDE", _DPM, _3M_SDE, "Exponential", ("k_dpmpp_3m_sde",), None, _FLAGGED, (), _SDE),
    ("Euler a", "EulerAncestralDiscreteScheduler", _K, AUTOMATIC, _EULER_A_ALIASES, None, _SPACING, (), _ENSD),
    ("Euler", "EulerDiscreteScheduler", _EULER, AUTOMATIC, ("k_euler",), None, None, (), {}),
    ("LMS", "LMSDiscreteScheduler", _K, AUTOMATIC, ("k_lms",), None, _FLAGGED, ("scipy",), {}),
    ("Heun", "HeunDiscreteScheduler", _K, AUTOMATIC, ("k_heun",), None, _FLAGGED, (), _2ND),
    ("DPM2", "KDPM2DiscreteScheduler", _K, "Karras", ("k_dpm_2",), None, _FLAGGED, (), _2ND),
    ("DPM2 a", "KDPM2AncestralDiscreteScheduler", _K, "Karras", ("k_dpm_2_a",), None, _FLAGGED, (), _2ND | _ENSD),
    ("DDIM", "DDIMScheduler", _DDIM, AUTOMATIC, ("ddim",), None, _SPACING, (), {}),
    ("PLMS", "PNDMScheduler", _PLMS, AUTOMATIC, ("plms",), None, _SPACING, (), {}),
    ("UniPC", _UNIPC, _UNIPC_A1111, AUTOMATIC, ("unipc",), None, _FLAGGED, (), {}),
    ("LCM", "LCMScheduler", {}, AUTOMATIC, ("k_lcm",), None, _NONE, (), {}),
    ("DEIS", _DEIS, {**_K, "use_flow_sigmas": False}, AUTOMATIC, ("deis",), None, _FLAGGED, (), {}),
)
_FLOW_ROWS: tuple[tuple, ...] = (  # DPM-Solver++'s formulas hold for any (alpha, sigma): its SDE variants too
    ("Euler", "FlowMatchEulerDiscreteScheduler", _FM_EULER, AUTOMATIC, _FM_EULER_ALIASES, None, _FLOW_FLAGS, (), {}),
    ("Heun", "FlowMatchHeunDiscreteScheduler", {}, AUTOMATIC, ("k_heun", "FlowMatch Heun"), None, _NONE, (), {}),
    ("DPM++ 2M", _DPM, _FLOW_2M, AUTOMATIC, ("k_dpmpp_2m",), None, _NONE, (), {}),
    ("DPM++ 2M SDE", _DPM, _FLOW_2M_SDE, AUTOMATIC, ("k_dpmpp_2m_sde",), None, _NONE, (), _SDE),
    ("DPM++ 2M SDE Heun", _DPM, {**_FLOW_2M_SDE, "solver_type": "heun"}, AUTOMATIC, ("k_dpmpp_2m_sde_heun",), None,
     _NONE, (), _SDE),
    ("DPM++ 3M SDE", _DPM, {**_FLOW_2M_SDE, "solver_order": 3}, AUTOMATIC, ("k_dpmpp_3m_sde",), None, _NONE, (), _SDE),
    ("UniPC", _UNIPC, {**_FLOW, "solver_type": "bh2"}, AUTOMATIC, ("unipc",), None, _NONE, (), {}),
    ("DEIS", _DEIS, _FLOW, AUTOMATIC, ("deis",), None, _NONE, (), {}),
)  # fmt: skip


def builtin_schedules() -> list[ScheduleType]:
    """The built-in schedule types, in A1111's order (fresh objects each call)."""
    ays = sig.ays_families()
    return [
        ScheduleType(name, name, aliases, kwargs, kinds, ays if families is _AYS else families, sigmas, requires, rho, inner)
        for name, aliases, kwargs, kinds, families, sigmas, requires, rho, inner in _SCHEDULE_ROWS
    ]


def builtin_samplers() -> list[SamplerSpec]:
    """The built-in samplers: the noise kind in A1111's order, then the flow kind."""
    return [
        SamplerSpec(
            name,
            cls,
            kwargs,
            default,
            kind,
            aliases,
            schedules=schedules,
            requires=requires,
            api_options=options,
            config_schedules=config,
        )
        for kind, rows in (("noise", _NOISE_ROWS), ("flow", _FLOW_ROWS))
        for name, cls, kwargs, default, aliases, schedules, config, requires, options in rows
    ]
