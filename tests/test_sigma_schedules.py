"""Sigma schedules (webui.generation.sigma_schedules) and the schedulers that install them (sigma_schedulers)."""

from __future__ import annotations

import inspect
import itertools
import math

import numpy as np
import pytest

from webui.families.registry import default_families
from webui.generation import sigma_schedules as sig
from webui.generation.sigma_schedules import ModelSigmas
from webui.models.ldm_config import scheduler_config

SD15 = dict(scheduler_config(default_families().get("sd15")))
FUNCTIONS = {
    "Uniform": sig.uniform,
    "Normal": sig.normal,
    "SGM Uniform": sig.sgm_uniform,
    "Simple": sig.simple,
    "DDIM": sig.ddim,
    "Karras": sig.karras,
    "Exponential": sig.exponential,
    "Polyexponential": sig.polyexponential,
    "KL Optimal": sig.kl_optimal,
    "Align Your Steps": sig.align_your_steps,
    "Beta": sig.beta,
}
_NUMPY_WRAP = pytest.mark.filterwarnings("ignore:__array_wrap__ must accept context:DeprecationWarning")


@pytest.fixture(scope="module")
def noise_model() -> ModelSigmas:
    from diffusers import EulerDiscreteScheduler

    return ModelSigmas.noise(EulerDiscreteScheduler.from_config(SD15).alphas_cumprod.numpy(), "sd15")


def _models(noise_model):
    yield noise_model
    yield ModelSigmas.flow(3.0, family_id="sd3")


# --- the functions ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", FUNCTIONS)
@pytest.mark.parametrize("steps", [1, 2, 7, 30])
def test_every_schedule_gives_steps_plus_one_falling_sigmas_ending_with_zero(noise_model, name, steps):
    for model in _models(noise_model):
        if name == "Align Your Steps" and model.kind == "flow":
            continue  # measured on SD 1.5 / SDXL only; the table offers it to those
        sigmas = sig.checked(FUNCTIONS[name](steps, model), steps, name)  # raises on a broken contract
        assert len(sigmas) == steps + 1 and sigmas[-1] == 0.0
        assert model.sigma_min * 0.999 <= sigmas[-2] and sigmas[0] <= model.sigma_max * 1.001, (name, model.kind)


@pytest.mark.parametrize("name", ["Uniform", "Normal", "SGM Uniform", "Simple", "Karras", "Exponential", "KL Optimal"])
def test_schedules_start_from_pure_noise(noise_model, name):
    for model in _models(noise_model):
        assert FUNCTIONS[name](5, model)[0] == pytest.approx(model.sigma_max, rel=1e-6)


def test_karras_is_the_rho_7_ramp_between_the_ends(noise_model):
    lo, hi = noise_model.sigma_min, noise_model.sigma_max
    expected = [(hi ** (1 / 7) + k / 4 * (lo ** (1 / 7) - hi ** (1 / 7))) ** 7 for k in range(5)] + [0.0]
    assert sig.karras(5, noise_model) == pytest.approx(expected, rel=1e-12)


def test_exponential_and_polyexponential_rho_1_are_log_linear(noise_model):
    lo, hi = math.log(noise_model.sigma_min), math.log(noise_model.sigma_max)
    expected = [math.exp(hi + k / 3 * (lo - hi)) for k in range(4)] + [0.0]
    assert sig.exponential(4, noise_model) == pytest.approx(expected, rel=1e-12)
    assert sig.polyexponential(4, noise_model) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize(
    ("name", "indices"),
    [
        ("Simple", [999, 749, 499, 249]),  # every N/steps-th entry down from the top
        ("DDIM", [751, 501, 251, 1]),  # DDIM's "leading" timesteps 1 + k * (N // steps)
        ("Uniform", [999, 666, 333, 0]),  # both ends included
        ("SGM Uniform", [999, 749.25, 499.5, 249.75]),  # steps + 1 points, the last dropped
    ],
)
def test_table_schedules_pick_these_timesteps(noise_model, name, indices):
    sigmas = FUNCTIONS[name](4, noise_model)[:-1]
    assert noise_model.index_of(np.array(sigmas)).tolist() == pytest.approx(indices, abs=1e-6)


def test_a_flow_model_is_the_shifted_time_grid():
    model = ModelSigmas.flow(3.0)
    assert model.sigma_max == 1.0
    assert model.sigma_min == pytest.approx(3 * 0.001 / (1 + 2 * 0.001))
    assert model.timestep(np.array([1.0, 0.5])).tolist() == [1000.0, 500.0]  # what the SD3 transformer takes


def test_noise_timesteps_invert_the_table(noise_model):
    index = np.array([0.0, 10.25, 500.5, 999.0])
    assert noise_model.index_of(noise_model.at_index(index)) == pytest.approx(index, abs=1e-9)


@pytest.mark.parametrize(
    ("sigmas", "problem"),
    [
        ([2.0, 1.0], "2 sigmas for 2 steps"),
        ([2.0, 1.0, 0.5], "it must end with 0"),
        ([1.0, 2.0, 0.0], "rise somewhere"),
        ([1.0, float("nan"), 0.0], "not finite"),
    ],
)
def test_the_contract_check_names_the_problem(sigmas, problem):
    with pytest.raises(ValueError, match=problem):
        sig.checked(sigmas, 2, "Mine")


# --- the schedulers ----------------------------------------------------------------------------------------

_FLAGS = {"use_karras_sigmas": sig.karras, "use_exponential_sigmas": sig.exponential, "use_beta_sigmas": sig.beta}
_WITH_FLAGS = [
    "EulerDiscreteScheduler",
    "LMSDiscreteScheduler",
    "HeunDiscreteScheduler",
    "KDPM2DiscreteScheduler",
    "KDPM2AncestralDiscreteScheduler",
    "DPMSolverSDEScheduler",
    "DPMSolverMultistepScheduler",
    "UniPCMultistepScheduler",
    "DEISMultistepScheduler",
]


def _pair(name: str, flag: str, steps: int = 6):
    """(diffusers' class with the flag, our subclass with our function for it), both set to ``steps``."""
    import diffusers

    from webui.generation.sigma_schedulers import SIGMA_SCHEDULERS

    base = getattr(diffusers, name)
    keys = set(inspect.signature(base.__init__).parameters)
    config = {k: v for k, v in SD15.items() if k in keys} | {"timestep_spacing": "linspace"}
    theirs = base.from_config({**config, flag: True})
    ours = SIGMA_SCHEDULERS[name].from_config(config)
    ours.use_sigma_schedule("x", _FLAGS[flag])
    theirs.set_timesteps(steps)
    ours.set_timesteps(steps)
    return theirs, ours


@_NUMPY_WRAP
@pytest.mark.parametrize(("name", "flag"), list(itertools.product(_WITH_FLAGS, _FLAGS)))
def test_our_layout_equals_diffusers_own_for_the_schedules_it_has(name, flag):
    """Where diffusers has the schedule as an option, installing it as custom sigmas gives the same arrays.

    That checks each subclass's layout (Heun's repeats, DPM2's midpoints, DPM2 a's up/down sigmas, the
    multistep solvers' final sigma). Tolerances: sigmas within float32 rounding; timesteps within 1,
    because diffusers rounds or truncates some of them to integers where we round to the nearest.
    """
    theirs, ours = _pair(name, flag)
    for attr in ("sigmas", "sigmas_interpol", "sigmas_up", "sigmas_down"):
        if hasattr(theirs, attr):
            a, b = getattr(theirs, attr).double().numpy(), getattr(ours, attr).double().numpy()
            assert a.shape == b.shape, attr
            assert np.allclose(a, b, rtol=1e-5, atol=1e-6, equal_nan=True), attr
    assert theirs.timesteps.shape == ours.timesteps.shape
    assert np.abs(theirs.timesteps.double().numpy() - ours.timesteps.double().numpy()).max() <= 1.0


def _lcm(schedule, steps: int):
    from webui.generation.sigma_schedulers import LCMSigmas

    scheduler = LCMSigmas.from_config(SD15)
    scheduler.use_sigma_schedule("x", schedule)
    scheduler.set_timesteps(steps)
    return scheduler.timesteps.tolist()


@pytest.mark.parametrize("steps", [1, 4, 8, 50])
def test_lcm_timesteps_stay_distinct_on_its_distillation_grid(steps):
    timesteps = _lcm(sig.karras, steps)
    assert len(timesteps) == steps and timesteps[0] == 999
    assert all(a > b for a, b in itertools.pairwise(timesteps))
    assert set(timesteps) <= set(range(19, 1000, 20))  # LCM's 50 original timesteps


def test_lcm_with_more_steps_than_its_grid_uses_training_timesteps():
    timesteps = _lcm(sig.uniform, 60)
    assert len(timesteps) == 60 and all(a > b for a, b in itertools.pairwise(timesteps))


def test_flow_multistep_solvers_noise_an_image_like_flow_match():
    import torch

    from webui.generation.sigma_schedulers import UniPCSigmas

    scheduler = UniPCSigmas.from_config(
        {"use_flow_sigmas": True, "prediction_type": "flow_prediction", "flow_shift": 3.0}
    )
    scheduler.set_timesteps(4)
    scheduler.set_begin_index(1)
    sample, noise = torch.ones(1, 2, 2, 2), torch.zeros(1, 2, 2, 2)
    sigma = scheduler.sigmas[1].item()
    out = scheduler.scale_noise(sample, scheduler.timesteps[1:2], noise)
    assert torch.allclose(out, torch.full_like(sample, 1.0 - sigma))
