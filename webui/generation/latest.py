"""What an interrupted batch still yields: the sampler's latest estimate of the finished image.

A1111 answers an interrupted job with an image of the batch it was sampling: its sampler returns
the denoised estimate of the last step (``last_latent``), which is decoded, pasted back and
returned like a finished image, only not saved (``save_incomplete_images`` is off by default).
Clients read ``images[0]`` of such an answer, so we do the same.

A pass records, after each scheduler step, what the estimate needs: where the scheduler reports
its prediction of the clean latents (``pred_original_sample`` of Euler, Heun, LMS, DPM2, DDIM,
DPM++ SDE, ``denoised`` of LCM), that; the multistep solvers (DPM++ 2M/SDE, UniPC) keep it as
their last model output; flow matching gives ``sample - sigma * velocity``. A scheduler with none
of these (PLMS, DEIS) leaves the loop's latents, decoded as they are. A1111 decodes the estimate
of the prompt alone, before CFG; diffusers' schedulers only see the guided one, which we decode.

torch is imported inside the functions that need it.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

# DPMSolver algorithm types whose model outputs are x0 predictions (not noise).
_X0_ALGORITHMS = ("dpmsolver++", "sde-dpmsolver++")


class Latest:
    """The newest estimate of one batch's pass; ``images()`` decodes it (``[]`` when no step ran)."""

    def __init__(self) -> None:
        self.pipe: Any = None  # the pass's pipeline: its VAE decodes the estimate
        self.finish: Callable[[list[Any]], list[Any]] | None = None  # e.g. inpaint's paste-back
        self.latents: Any = None  # the loop's latents after the last step (the fallback)
        self._scheduler: Any = None
        self._step: tuple[Any, Any] | None = None  # (model output, sample) of the last scheduler step
        self._denoised: Any = None  # the prediction the scheduler reported for it

    def watch(self, pipe: Any, scheduler: Any) -> Callable[[], None]:
        """Record every ``scheduler.step`` of this pass; returns the call that stops recording."""
        self.pipe, self._scheduler, self._step, self._denoised, self.latents = pipe, scheduler, None, None, None
        original = scheduler.step
        if "return_dict" not in inspect.signature(original).parameters:
            return lambda: None

        @functools.wraps(original)  # the pipeline reads step's signature (eta, generator) through __wrapped__
        def step(model_output: Any, timestep: Any, sample: Any, *args: Any, return_dict: bool = True, **kw: Any):
            out = original(model_output, timestep, sample, *args, return_dict=True, **kw)
            self._step = (model_output, sample)
            self._denoised = _reported(out)
            return out if return_dict or not hasattr(out, "to_tuple") else out.to_tuple()

        scheduler.step = step
        return lambda: scheduler.__dict__.pop("step", None)

    def estimate(self) -> Any:
        """The latents to decode: the clean-image prediction of the last step, else the loop's latents."""
        if self._denoised is not None:
            return self._denoised
        scheduler = self._scheduler
        if self._step is not None and scheduler is not None:
            model_output, sample = self._step
            outputs = getattr(scheduler, "model_outputs", None)
            if outputs and outputs[-1] is not None and _keeps_x0(scheduler):
                return outputs[-1]
            if type(scheduler).__name__.startswith("FlowMatch") and getattr(scheduler, "step_index", None):
                sigma = scheduler.sigmas[scheduler.step_index - 1]  # the sigma the velocity was predicted at
                return (sample.float() - sigma * model_output.float()).to(model_output.dtype)
        return self.latents

    def images(self) -> list[Any]:
        """The estimate decoded (and finished, e.g. pasted back) as the pass would have; [] before any step."""
        from webui.generation.passes import decode_guarded

        latents = self.estimate()
        if latents is None or self.pipe is None:
            return []
        images = decode_guarded(self.pipe, latents)
        return self.finish(images) if self.finish else images


def _reported(out: Any) -> Any:
    for name in ("pred_original_sample", "denoised"):
        value = getattr(out, name, None)
        if value is not None:
            return value
    return None


def _keeps_x0(scheduler: Any) -> bool:
    """Whether a multistep solver's ``model_outputs`` hold x0 predictions (DPM++, UniPC with predict_x0)."""
    if getattr(scheduler, "predict_x0", None) is True:
        return True
    return getattr(scheduler.config, "algorithm_type", "") in _X0_ALGORITHMS
