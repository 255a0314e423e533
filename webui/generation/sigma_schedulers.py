"""diffusers schedulers that run any sigma schedule: small subclasses of ours, one per algorithm.

Most diffusers schedulers only know their own spacings and three sigma flags (Karras, Exponential,
Beta), and several have none (Euler a, LCM, the flow-matching Heun). A1111 runs every sampler with
every schedule type, because a k-diffusion sampler takes any list of sigmas. Each class here is
the diffusers scheduler with ``set_timesteps`` extended: after the parent has set up its state for
``num_inference_steps``, the schedule given to ``use_sigma_schedule`` is computed for that step
count (``webui.generation.sigma_schedules``) and installed the way this algorithm keeps it:
Heun and DPM++ SDE repeat each sigma for their second evaluation, DPM2 adds the log-midpoints,
DPM2 a its ancestral up/down sigmas, the multistep solvers keep one final sigma, LCM keeps integer
timesteps on its distillation grid. The pipeline still passes only a step count, so img2img
strength, refiner hand-off and hires fix slice the schedule exactly as they slice the built-in ones.

Without ``use_sigma_schedule`` every class behaves as its parent. The flow-matching multistep
solvers (DPM++, UniPC, DEIS with flow sigmas) also get ``scale_noise``, which SD3's img2img and
inpaint pipelines need and which diffusers gives its FlowMatch schedulers only.

Imports torch and diffusers: load it lazily (``webui.generation.samplers`` does, when building).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from diffusers import (
    DEISMultistepScheduler,
    DPMSolverMultistepScheduler,
    DPMSolverSDEScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    FlowMatchEulerDiscreteScheduler,
    FlowMatchHeunDiscreteScheduler,
    HeunDiscreteScheduler,
    KDPM2AncestralDiscreteScheduler,
    KDPM2DiscreteScheduler,
    LCMScheduler,
    LMSDiscreteScheduler,
    UniPCMultistepScheduler,
)

from webui.generation.sigma_schedules import ModelSigmas, SigmaFn, checked

FLOW_CLIP = 1e-6  # the multistep solvers take log(1 - sigma): keep a flow sigma of 1 just below it


class CustomSigmas:
    """Mixin: ``set_timesteps`` installs the schedule given to ``use_sigma_schedule`` (if any)."""

    _sigma_schedule: tuple[str, SigmaFn, str] | None = None
    parent_first = True  # let the parent set up its state for the step count, then replace the schedule

    def use_sigma_schedule(self, name: str, sigmas: SigmaFn, family_id: str = "") -> None:
        """From now on ``set_timesteps(n)`` runs ``sigmas(n, model)`` (A1111's schedule type ``name``)."""
        self._sigma_schedule = (name, sigmas, family_id)

    @property
    def sigma_schedule(self) -> str:
        """The schedule type installed by ``use_sigma_schedule`` ("" = the parent's own)."""
        return self._sigma_schedule[0] if self._sigma_schedule else ""

    def set_timesteps(
        self, num_inference_steps: int | None = None, device: Any = None, *args: Any, **kwargs: Any
    ) -> None:
        if self._sigma_schedule is None or self.parent_first:
            super().set_timesteps(num_inference_steps, device, *args, **kwargs)
        if self._sigma_schedule is None:
            return
        if num_inference_steps is None:
            raise ValueError(f"schedule type {self.sigma_schedule!r} needs the step count (num_inference_steps)")
        name, function, family_id = self._sigma_schedule
        model = self.model_sigmas(family_id, kwargs.get("mu"))
        sigmas = checked(function(num_inference_steps, model), num_inference_steps, name)
        self._install(sigmas, model, device)

    def model_sigmas(self, family_id: str = "", mu: float | None = None) -> ModelSigmas:
        """This scheduler's table of noise levels (flow: from its shift)."""
        config = self.config
        if getattr(config, "use_flow_sigmas", False):
            shift = math.exp(mu) if mu is not None else config.flow_shift
            return ModelSigmas.flow(shift, config.num_train_timesteps, family_id)
        return ModelSigmas.noise(self.alphas_cumprod.numpy(), family_id)

    def _install(self, sigmas: np.ndarray, model: ModelSigmas, device: Any) -> None:
        raise NotImplementedError


def _float(values: np.ndarray, device: Any = None) -> torch.Tensor:
    return torch.as_tensor(np.asarray(values, dtype=np.float32), device=device)


def _pairs(values: torch.Tensor) -> torch.Tensor:
    """[a, b, c] -> [a, b, b, c, c]: every value after the first, twice (one per evaluation)."""
    return torch.cat([values[:1], values[1:].repeat_interleave(2)])


# --- first-order k-diffusion samplers: one sigma per step ----------------------------------------------


class EulerSigmas(CustomSigmas, EulerDiscreteScheduler):
    """Euler takes sigmas itself; the mixin only computes them for the step count."""

    parent_first = False

    def _install(self, sigmas: np.ndarray, model: ModelSigmas, device: Any) -> None:
        EulerDiscreteScheduler.set_timesteps(self, device=device, sigmas=list(sigmas))


class EulerAncestralSigmas(CustomSigmas, EulerAncestralDiscreteScheduler):
    def _install(self, sigmas: np.ndarray, model: ModelSigmas, device: Any) -> None:
        self.sigmas = _float(sigmas)
        self.timesteps = _float(model.timestep(sigmas[:-1]), device)


class LMSSigmas(CustomSigmas, LMSDiscreteScheduler):
    def _install(self, sigmas: np.ndarray, model: ModelSigmas, device: Any) -> None:
        self.sigmas = _float(sigmas)
        self.timesteps = _float(model.timestep(sigmas[:-1]), device)


# --- second-order k-diffusion samplers -----------------------------------------------------------------


class HeunSigmas(CustomSigmas, HeunDiscreteScheduler):
    """Each sigma after the first is evaluated twice (the Euler step, then the correction)."""

    def _install(self, sigmas: np.ndarray, model: ModelSigmas, device: Any) -> None:
        self.sigmas = _pairs(_float(sigmas))[:-1]  # the final 0 once
        self.timesteps = _pairs(_float(model.timestep(sigmas[:-1]), device))


class DPMSolverSDESigmas(CustomSigmas, DPMSolverSDEScheduler):
    """Like Heun, with the second evaluation at DPM++ SDE's midpoint timestep."""

    def _install(self, sigmas: np.ndarray, model: ModelSigmas, device: Any) -> None:
        steps = sigmas[:-1]
        midpoints = torch.from_numpy(self._second_order_timesteps(steps, np.log(model.table)))
        timesteps = _pairs(torch.from_numpy(model.timestep(steps)))
        timesteps[1::2] = midpoints
        self.sigmas = _pairs(_float(sigmas))[:-1]
        self.timesteps = timesteps.to(device=device)


def _timesteps_at(model: ModelSigmas, sigmas: torch.Tensor, device: Any, like: torch.Tensor) -> torch.Tensor:
    return torch.from_numpy(model.timestep(sigmas.double().numpy())).to(device=device, dtype=like.dtype)


class KDPM2Sigmas(CustomSigmas, KDPM2DiscreteScheduler):
    """DPM2 evaluates at each sigma and at the log-midpoint towards the next one."""

    def _install(self, sigmas: np.ndarray, model: ModelSigmas, device: Any) -> None:
        base = _float(sigmas)
        midpoints = base.log().lerp(base.roll(1).log(), 0.5).exp()
        timesteps = torch.from_numpy(model.timestep(sigmas[:-1])).to(device)
        between = _timesteps_at(model, midpoints, device, timesteps)
        self.sigmas = torch.cat([_pairs(base), base[-1:]])
        self.sigmas_interpol = torch.cat([_pairs(midpoints), midpoints[-1:]])
        paired = torch.stack((between[1:-1, None], timesteps[1:, None]), dim=-1).flatten()
        self.timesteps = torch.cat([timesteps[:1], paired])


class KDPM2AncestralSigmas(CustomSigmas, KDPM2AncestralDiscreteScheduler):
    """DPM2 a: the midpoint lies towards the ancestral step's "down" sigma, then noise of the "up" one."""

    def _install(self, sigmas: np.ndarray, model: ModelSigmas, device: Any) -> None:
        base = _float(sigmas)
        following = base.roll(-1)
        following[-1] = 0.0
        up = (following**2 * (base**2 - following**2) / base**2) ** 0.5
        down = (following**2 - up**2) ** 0.5
        down[-1] = 0.0
        midpoints = base.log().lerp(down.log(), 0.5).exp()
        midpoints[-2:] = 0.0
        timesteps = torch.from_numpy(model.timestep(sigmas[:-1])).to(device)
        between = _timesteps_at(model, midpoints, device, timesteps)
        self.sigmas, self.sigmas_interpol, self.sigmas_up, self.sigmas_down = (
            torch.cat([_pairs(values), values[-1:]]) for values in (base, midpoints, up, down)
        )
        paired = torch.stack((between[:-2, None], timesteps[1:, None]), dim=-1).flatten()
        self.timesteps = torch.cat([timesteps[:1], paired])


# --- multistep solvers (DPM++ 2M/SDE/3M, UniPC, DEIS): one sigma per step plus a final one ---------------


class _Multistep(CustomSigmas):
    """The solver steps to its last sigma: 0 where it can (final_sigmas_type "zero"), else sigma_min."""

    can_reach_zero = True

    def _install(self, sigmas: np.ndarray, model: ModelSigmas, device: Any) -> None:
        steps = sigmas[:-1].copy()
        if model.kind == "flow":
            steps = np.minimum(steps, 1.0 - FLOW_CLIP)
        final = 0.0
        if not (self.can_reach_zero and getattr(self.config, "final_sigmas_type", "zero") == "zero"):
            final = min(model.sigma_min, float(steps[-1]))
        timesteps = model.timestep(steps)
        if model.kind == "noise":
            timesteps = timesteps.round()
        self.sigmas = _float(np.append(steps, final))
        self.timesteps = torch.from_numpy(timesteps).to(device=device, dtype=torch.int64)

    def scale_noise(self, sample: torch.Tensor, timestep: Any, noise: torch.Tensor) -> torch.Tensor:
        """Flow models: the sample noised to ``timestep``'s sigma, ``sigma * noise + (1 - sigma) * sample``."""
        if not getattr(self.config, "use_flow_sigmas", False):
            raise AttributeError("scale_noise is for flow-matching models; use add_noise")
        timestep = torch.as_tensor(timestep).reshape(-1)
        if self.begin_index is None:
            indices = [self.index_for_timestep(t.to(self.timesteps.device)) for t in timestep]
        elif self.step_index is not None:  # inpainting, after a step
            indices = [self.step_index] * len(timestep)
        else:  # img2img, before the first step
            indices = [self.begin_index] * len(timestep)
        sigma = self.sigmas[indices].to(device=sample.device, dtype=sample.dtype)
        sigma = sigma.reshape(-1, *([1] * (sample.ndim - 1)))
        return sigma * noise + (1.0 - sigma) * sample


class DPMSolverMultistepSigmas(_Multistep, DPMSolverMultistepScheduler):
    pass


class UniPCSigmas(_Multistep, UniPCMultistepScheduler):
    pass


class DEISSigmas(_Multistep, DEISMultistepScheduler):
    can_reach_zero = False  # its log-SNR steps have no end at sigma 0


# --- LCM: integer timesteps on the distillation grid -----------------------------------------------------


class LCMSigmas(CustomSigmas, LCMScheduler):
    """The schedule over LCM's own grid of ``original_inference_steps`` timesteps (A1111's LCM denoiser).

    Each sigma becomes the nearest grid timestep, kept distinct and falling; with more steps than
    the grid has, the nearest training timesteps are used instead.
    """

    parent_first = False  # LCM's own schedule refuses more steps than its grid; custom timesteps do not

    def model_sigmas(self, family_id: str = "", mu: float | None = None) -> ModelSigmas:
        size = self.config.num_train_timesteps
        stride = size // self.config.original_inference_steps
        grid = np.arange(1, self.config.original_inference_steps + 1) * stride - 1
        return ModelSigmas.noise(self.alphas_cumprod.numpy(), family_id, steps=grid)

    def _install(self, sigmas: np.ndarray, model: ModelSigmas, device: Any) -> None:
        steps = len(sigmas) - 1
        if steps <= model.size:
            index = _distinct_falling(np.rint(model.index_of(sigmas[:-1])).astype(np.int64), model.size)
            timesteps = model.timesteps[index].astype(np.int64)
        else:
            everything = ModelSigmas.noise(self.alphas_cumprod.numpy())
            raw = np.rint(everything.timestep(sigmas[:-1])).astype(np.int64)
            timesteps = _distinct_falling(raw, everything.size)
        LCMScheduler.set_timesteps(self, device=device, timesteps=[int(t) for t in timesteps])


def _distinct_falling(index: np.ndarray, size: int) -> np.ndarray:
    """Integer indices made strictly falling and inside [0, size), moving as few as needed."""
    out = index.copy()
    n = len(out)
    for k in range(n):
        lowest = n - 1 - k  # room for the ones after it
        highest = size - 1 if k == 0 else out[k - 1] - 1
        out[k] = min(max(out[k], lowest), highest)
    return out


# --- flow matching (SD3) -----------------------------------------------------------------------------------


class _FlowMatch(CustomSigmas):
    def model_sigmas(self, family_id: str = "", mu: float | None = None) -> ModelSigmas:
        shift = math.exp(mu) if mu is not None else float(getattr(self, "_shift", None) or self.config.shift)
        return ModelSigmas.flow(shift, self.config.num_train_timesteps, family_id)


class FlowMatchEulerSigmas(_FlowMatch, FlowMatchEulerDiscreteScheduler):
    def _install(self, sigmas: np.ndarray, model: ModelSigmas, device: Any) -> None:
        self.sigmas = _float(sigmas, device)
        self.timesteps = _float(model.timestep(sigmas[:-1]), device)


class FlowMatchHeunSigmas(_FlowMatch, FlowMatchHeunDiscreteScheduler):
    def _install(self, sigmas: np.ndarray, model: ModelSigmas, device: Any) -> None:
        self.sigmas = _pairs(_float(sigmas, device))[:-1]
        self.timesteps = _pairs(_float(model.timestep(sigmas[:-1]), device))


# diffusers class name -> ours (the names are listed torch-free in sigma_schedules.SIGMA_CAPABLE)
SIGMA_SCHEDULERS: dict[str, type] = {
    "EulerDiscreteScheduler": EulerSigmas,
    "EulerAncestralDiscreteScheduler": EulerAncestralSigmas,
    "LMSDiscreteScheduler": LMSSigmas,
    "HeunDiscreteScheduler": HeunSigmas,
    "DPMSolverSDEScheduler": DPMSolverSDESigmas,
    "KDPM2DiscreteScheduler": KDPM2Sigmas,
    "KDPM2AncestralDiscreteScheduler": KDPM2AncestralSigmas,
    "DPMSolverMultistepScheduler": DPMSolverMultistepSigmas,
    "UniPCMultistepScheduler": UniPCSigmas,
    "DEISMultistepScheduler": DEISSigmas,
    "LCMScheduler": LCMSigmas,
    "FlowMatchEulerDiscreteScheduler": FlowMatchEulerSigmas,
    "FlowMatchHeunDiscreteScheduler": FlowMatchHeunSigmas,
}
