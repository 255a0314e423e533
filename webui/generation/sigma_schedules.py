"""The A1111 schedule types as sigma lists, computed from a model's own noise levels.

A schedule function takes ``(steps, model)`` and returns ``steps + 1`` sigmas, falling from high
to low and ending with 0 (the k-diffusion convention that A1111 samples with). ``model`` is a
``ModelSigmas``: the checkpoint's table of noise levels, one per training timestep, plus the maps
between a sigma and the timestep the denoiser is called with. The same function serves
noise-prediction models (sigma = sqrt((1 - alpha_bar) / alpha_bar)) and rectified-flow models
(sigma = the shifted time in (0, 1]); a schedule only applies where it means something (Align
Your Steps is a table measured on SD 1.5 and SDXL, so it exists for those only).

What each one is (A1111 1.10 ``sd_schedulers.py`` behaviour, written afresh here):
  Uniform, Normal  timesteps evenly spaced over the whole table (both ends included)
  SGM Uniform      ``steps + 1`` evenly spaced timesteps, the last (timestep 0) dropped
  Simple           every ``N / steps``-th table entry counted down from the top
  DDIM             DDIM's "leading" timesteps ``1 + k * (N // steps)``
  Karras           rho = 7 between the table's sigma_min and sigma_max
  Exponential, Polyexponential (rho 1)  log-sigma linear between the two
  KL Optimal       linear in arctan(sigma)
  Align Your Steps NVIDIA's 10-step lists, log-linearly resampled to ``steps``
  Beta             Beta(0.6, 0.6) quantiles spread linearly over [sigma_min, sigma_max]

numpy only (scipy for Beta); no torch. ``webui.generation.sigma_schedulers`` installs these lists
into diffusers schedulers.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

KINDS = ("noise", "flow")

# diffusers schedulers that webui.generation.sigma_schedulers can give any sigma schedule
SIGMA_CAPABLE = frozenset(
    {
        "EulerDiscreteScheduler",
        "EulerAncestralDiscreteScheduler",
        "LMSDiscreteScheduler",
        "HeunDiscreteScheduler",
        "DPMSolverSDEScheduler",
        "KDPM2DiscreteScheduler",
        "KDPM2AncestralDiscreteScheduler",
        "DPMSolverMultistepScheduler",
        "UniPCMultistepScheduler",
        "DEISMultistepScheduler",
        "LCMScheduler",
        "FlowMatchEulerDiscreteScheduler",
        "FlowMatchHeunDiscreteScheduler",
    }
)


@dataclass(frozen=True)
class ModelSigmas:
    """A model's noise levels: ``table[i]`` (ascending) is the sigma at ``timesteps[i]``.

    kind "noise": the table comes from the training alphas; a sigma between two entries maps to a
    fractional timestep by log-sigma interpolation (k-diffusion's ``sigma_to_t``, diffusers'
    ``_sigma_to_t``). kind "flow": the table is the shifted time grid ``shift(i / N)``, and the
    denoiser takes ``sigma * N`` (the convention of diffusers' flow-matching schedulers).
    """

    table: np.ndarray
    timesteps: np.ndarray
    kind: str = "noise"
    family_id: str = ""
    num_train_timesteps: int = 1000

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown model kind {self.kind!r}; use one of: {', '.join(KINDS)}")
        if len(self.table) < 2 or len(self.table) != len(self.timesteps):
            raise ValueError("a sigma table needs two or more entries, one per timestep")

    @classmethod
    def noise(cls, alphas_cumprod: Sequence[float], family_id: str = "", steps: Sequence[int] | None = None):
        """From a noise-prediction scheduler's ``alphas_cumprod`` (optionally only at ``steps``)."""
        alphas = np.asarray(alphas_cumprod, dtype=np.float64)
        every = np.arange(len(alphas))
        chosen = every if steps is None else np.asarray(steps, dtype=np.int64)
        sigmas = np.sqrt((1.0 - alphas[chosen]) / alphas[chosen])
        return cls(sigmas, chosen.astype(np.float64), "noise", family_id, len(alphas))

    @classmethod
    def flow(cls, shift: float, num_train_timesteps: int = 1000, family_id: str = ""):
        """A rectified-flow model with this (static) shift: sigma = shift t / (1 + (shift - 1) t)."""
        t = np.arange(1, num_train_timesteps + 1, dtype=np.float64) / num_train_timesteps
        sigmas = shift * t / (1.0 + (shift - 1.0) * t)
        return cls(sigmas, sigmas * num_train_timesteps, "flow", family_id, num_train_timesteps)

    @property
    def sigma_min(self) -> float:
        return float(self.table[0])

    @property
    def sigma_max(self) -> float:
        return float(self.table[-1])

    @property
    def size(self) -> int:
        return len(self.table)

    def at_index(self, index: np.ndarray) -> np.ndarray:
        """Sigmas at fractional table indices, interpolated in log-sigma."""
        return np.exp(np.interp(np.asarray(index, dtype=np.float64), np.arange(self.size), np.log(self.table)))

    def index_of(self, sigmas: np.ndarray) -> np.ndarray:
        """The fractional table index of each sigma (clamped to the table's range)."""
        logs = np.log(np.maximum(np.asarray(sigmas, dtype=np.float64), 1e-10))
        return np.interp(logs, np.log(self.table), np.arange(self.size))

    def timestep(self, sigmas: np.ndarray) -> np.ndarray:
        """The timestep the denoiser is called with at each sigma (float)."""
        sigmas = np.asarray(sigmas, dtype=np.float64)
        if self.kind == "flow":
            return sigmas * self.num_train_timesteps
        return np.interp(self.index_of(sigmas), np.arange(self.size), self.timesteps)


# (steps, model) -> steps + 1 sigmas, high to low, ending with 0
SigmaFn = Callable[[int, ModelSigmas], Sequence[float]]


def _with_zero(sigmas: np.ndarray) -> list[float]:
    return [float(s) for s in sigmas] + [0.0]


def uniform(steps: int, model: ModelSigmas) -> list[float]:
    return _with_zero(model.at_index(np.linspace(model.size - 1, 0, steps)))


def normal(steps: int, model: ModelSigmas) -> list[float]:
    """Evenly spaced timesteps from sigma_max's to sigma_min's: on a model's full range, Uniform."""
    top, bottom = model.index_of(np.array([model.sigma_max, model.sigma_min]))
    return _with_zero(model.at_index(np.linspace(top, bottom, steps)))


def sgm_uniform(steps: int, model: ModelSigmas) -> list[float]:
    return _with_zero(model.at_index(np.linspace(model.size - 1, 0, steps + 1)[:-1]))


def simple(steps: int, model: ModelSigmas) -> list[float]:
    stride = model.size / steps
    return _with_zero(np.array([model.table[-(1 + int(k * stride))] for k in range(steps)]))


def ddim(steps: int, model: ModelSigmas) -> list[float]:
    stride = max(model.size // steps, 1)
    index = np.minimum(1 + stride * np.arange(steps), model.size - 1)
    return _with_zero(model.table[index][::-1])


def karras(steps: int, model: ModelSigmas, rho: float = 7.0) -> list[float]:
    ramp = np.linspace(0.0, 1.0, steps)
    top, bottom = model.sigma_max ** (1.0 / rho), model.sigma_min ** (1.0 / rho)
    return _with_zero((top + ramp * (bottom - top)) ** rho)


def polyexponential(steps: int, model: ModelSigmas, rho: float = 1.0) -> list[float]:
    ramp = np.linspace(1.0, 0.0, steps) ** rho
    lo, hi = math.log(model.sigma_min), math.log(model.sigma_max)
    return _with_zero(np.exp(lo + ramp * (hi - lo)))


def exponential(steps: int, model: ModelSigmas) -> list[float]:
    return _with_zero(np.exp(np.linspace(math.log(model.sigma_max), math.log(model.sigma_min), steps)))


def kl_optimal(steps: int, model: ModelSigmas) -> list[float]:
    """The KL-optimal schedule of the Align Your Steps paper: linear in arctan(sigma)."""
    t = np.linspace(0.0, 1.0, steps)
    return _with_zero(np.tan(t * math.atan(model.sigma_min) + (1.0 - t) * math.atan(model.sigma_max)))


def ays_families() -> tuple[str, ...]:
    """The families Align Your Steps was measured for (their adapter names a diffusers AysSchedules table)."""
    from webui.families.registry import family_ids

    return family_ids(lambda f: f.ays_table)


def _ays_table(family_id: str) -> str:
    """A1111 uses the SDXL list for SDXL models and the SD1.5 list for the other noise models."""
    from webui.families.registry import default_families

    families = default_families()
    table = families.get(family_id).ays_table if family_id in families else ""
    return table or "StableDiffusionSigmas"


def align_your_steps(steps: int, model: ModelSigmas) -> list[float]:
    """NVIDIA's 10-step AYS sigmas (diffusers' table, ending at sigma_min), log-linearly resampled."""
    from diffusers.schedulers.scheduling_utils import AysSchedules

    key = _ays_table(model.family_id)
    base = np.asarray([*AysSchedules[key][:-1], model.sigma_min], dtype=np.float64)
    if steps != len(base):
        logs = np.interp(np.linspace(0, 1, steps), np.linspace(0, 1, len(base)), np.log(base[::-1]))
        base = np.exp(logs)[::-1]
    return _with_zero(base)


def beta(steps: int, model: ModelSigmas, alpha: float = 0.6, beta_: float = 0.6) -> list[float]:
    """Beta quantiles over [sigma_min, sigma_max] ("Beta Sampling is All You Need", Lee et al. 2024)."""
    from scipy import stats

    quantiles = stats.beta.ppf(1.0 - np.linspace(0.0, 1.0, steps), alpha, beta_)
    return _with_zero(model.sigma_min + quantiles * (model.sigma_max - model.sigma_min))


def checked(sigmas: Sequence[float], steps: int, name: str) -> np.ndarray:
    """``sigmas`` as an array after checking the contract: steps + 1 finite values, falling, ending with 0."""
    values = np.asarray([float(s) for s in sigmas], dtype=np.float64)
    problem = ""
    if len(values) != steps + 1:
        problem = f"{len(values)} sigmas for {steps} steps (it must give steps + 1)"
    elif not np.isfinite(values).all() or (values < 0).any():
        problem = "sigmas that are negative or not finite"
    elif values[-1] != 0.0:
        problem = f"a last sigma of {values[-1]:g} (it must end with 0)"
    elif (np.diff(values) > 0).any():
        problem = "sigmas that rise somewhere (they must fall from the first to the last)"
    if problem:
        raise ValueError(f"schedule type {name!r} gave {problem}; fix its sigma function")
    return values
