"""The sampler table: names, schedule types, validity per family, and schedulers that really run."""

from __future__ import annotations

import copy
import dataclasses
import inspect
import itertools
import subprocess
import sys

import pytest

from webui.families.registry import default_families
from webui.generation.samplers import (
    AUTOMATIC,
    SamplerError,
    SamplerSpec,
    SamplerTable,
    ScheduleType,
    UnknownSampler,
    samplers_json,
    schedulers_json,
)
from webui.models.ldm_config import scheduler_config

FAMILIES = default_families()
FAMILY_IDS = FAMILIES.names()
NOISE_SAMPLERS = [
    "DPM++ 2M",
    "DPM++ SDE",
    "DPM++ 2M SDE",
    "DPM++ 2M SDE Heun",
    "DPM++ 3M SDE",
    "Euler a",
    "Euler",
    "LMS",
    "Heun",
    "DPM2",
    "DPM2 a",
    "DDIM",
    "PLMS",
    "UniPC",
    "LCM",
    "DEIS",
]
FLOW_SAMPLERS = ["Euler", "Heun", "DPM++ 2M", "DPM++ 2M SDE", "DPM++ 2M SDE Heun", "DPM++ 3M SDE", "UniPC", "DEIS"]
SCHEDULES = [
    "Automatic",
    "Uniform",
    "Karras",
    "Exponential",
    "Polyexponential",
    "SGM Uniform",
    "KL Optimal",
    "Align Your Steps",
    "Simple",
    "Normal",
    "DDIM",
    "Beta",
]
NOT_FLOW = [name for name in SCHEDULES if name != "Align Your Steps"]
# KDPM2's constructor triggers thousands of these (numpy 2 on torch tensors); recording them is slow.
_NUMPY_WRAP = pytest.mark.filterwarnings("ignore:__array_wrap__ must accept context:DeprecationWarning")
_SDE_RANGE = pytest.mark.filterwarnings("ignore:Should have ta>=t0:UserWarning")  # torchsde, last step
# Families whose scheduler config and offers equal another's: their full matrix is marked slow.
_SAME_AS_OTHERS = {"sdxl_refiner", "sd35_medium", "sd35_large"}


def family(fid: str):
    return FAMILIES.get(fid)


@pytest.fixture
def table() -> SamplerTable:
    return SamplerTable()


def _build(table: SamplerTable, fid: str, sampler: str, schedule: str = "", task: str = "txt2img", **kw):
    return table.build(scheduler_config(family(fid)), family(fid), task, sampler, schedule, **kw)


# --- names ---------------------------------------------------------------------------------------


def test_sampler_names_follow_a1111_order(table):
    assert table.sampler_names() == NOISE_SAMPLERS


def test_schedule_names_follow_a1111_order(table):
    assert table.schedule_names() == SCHEDULES


# --- validity per family -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fid", "task", "expected"),
    [
        ("sd15", "txt2img", NOISE_SAMPLERS),
        ("sd15", "inpaint", NOISE_SAMPLERS),
        ("sd2", "img2img", NOISE_SAMPLERS),
        ("sdxl", "img2img", NOISE_SAMPLERS),
        ("sdxl_refiner", "img2img", NOISE_SAMPLERS),
        ("sd3", "txt2img", FLOW_SAMPLERS),
        ("sd3", "img2img", FLOW_SAMPLERS),  # the multistep solvers get scale_noise from our subclasses
        ("sd3", "inpaint", FLOW_SAMPLERS),
        ("sd35_medium", "img2img", FLOW_SAMPLERS),
        ("sd35_large", "txt2img", FLOW_SAMPLERS),
    ],
)
def test_samplers_for_family_and_task(table, fid, task, expected):
    assert table.samplers_for(family(fid), task) == expected


@pytest.mark.parametrize(
    ("fid", "sampler", "expected"),
    [
        *[("sd15", name, SCHEDULES) for name in NOISE_SAMPLERS if name not in ("DDIM", "PLMS")],
        ("sdxl", "Euler a", SCHEDULES),
        ("sd15", "DDIM", ["Automatic", "Uniform", "SGM Uniform", "Simple", "Normal", "DDIM"]),  # timestep samplers
        ("sd15", "PLMS", ["Automatic", "Uniform", "SGM Uniform", "Simple", "Normal", "DDIM"]),
        *[("sd3", name, NOT_FLOW) for name in FLOW_SAMPLERS],  # Align Your Steps has no table for flow models
    ],
)
def test_schedules_for_sampler(table, fid, sampler, expected):
    assert table.schedules_for(family(fid), sampler) == expected


def test_align_your_steps_is_only_offered_to_the_families_it_was_made_for(table):
    custom = dataclasses.replace(family("sd15"), id="my_sd15_finetune", label="My SD1.5")
    assert "Align Your Steps" in table.schedules_for(family("sd15"), "Euler")
    assert "Align Your Steps" not in table.schedules_for(custom, "Euler")
    choice = table.choose(custom, "txt2img", "Euler", "Align Your Steps")
    assert choice.schedule.name == "Automatic"
    assert choice.warnings == (
        (
            "Schedule type 'Align Your Steps' does not work with sampler 'Euler' on My SD1.5 (it exists for sd15, sd2, "
            "sdxl, sdxl_refiner only); Automatic was used (the sampler's own schedule)"
        ),
    )


@_NUMPY_WRAP
@_SDE_RANGE
@pytest.mark.parametrize(
    "fid", [pytest.param(f, marks=pytest.mark.slow) if f in _SAME_AS_OTHERS else f for f in FAMILY_IDS]
)
def test_every_sampler_with_every_schedule_builds_and_samples(table, fid):
    """Every A1111 sampler name x schedule type (fallbacks included), 3 steps to the end on random tensors."""
    import torch

    fam = family(fid)
    for sampler in dict.fromkeys(NOISE_SAMPLERS + FLOW_SAMPLERS):
        for schedule in SCHEDULES:
            built = _build(table, fid, sampler, schedule, seed=0)
            scheduler = built.scheduler
            scheduler.set_timesteps(3)
            gen = torch.Generator().manual_seed(0)
            x = torch.randn(1, fam.latent_channels, 4, 4, generator=gen) * getattr(scheduler, "init_noise_sigma", 1.0)
            step_kw = {"generator": gen} if "generator" in inspect.signature(scheduler.step).parameters else {}
            for t in scheduler.timesteps:
                if hasattr(scheduler, "scale_model_input"):
                    x = scheduler.scale_model_input(x, t)
                x = scheduler.step(torch.randn(x.shape, generator=gen) * 0.1, t, x, **step_kw).prev_sample
            assert torch.isfinite(x).all(), f"{fid}: {sampler} / {schedule} gave non-finite latents"


@pytest.mark.parametrize("fid", ["sd3", "sd35_medium", "sd35_large"])
@pytest.mark.parametrize("task", ["img2img", "inpaint"])
def test_flow_img2img_samplers_have_scale_noise(table, fid, task):
    for sampler in table.samplers_for(family(fid), task):
        assert hasattr(_build(table, fid, sampler, task=task).scheduler, "scale_noise"), sampler


def test_flow_txt2img_keeps_the_diffusers_class_when_nothing_needs_ours(table):
    assert type(_build(table, "sd3", "UniPC").scheduler).__name__ == "UniPCMultistepScheduler"
    assert type(_build(table, "sd3", "UniPC", task="img2img").scheduler).__name__ == "UniPCSigmas"
    assert type(_build(table, "sd3", "UniPC", "KL Optimal").scheduler).__name__ == "UniPCSigmas"


@pytest.mark.parametrize("sampler", FLOW_SAMPLERS)
def test_flow_samplers_predict_flow(table, sampler):
    scheduler = _build(table, "sd3", sampler).scheduler
    assert type(scheduler).__name__.startswith("FlowMatch") or (
        scheduler.config.use_flow_sigmas and scheduler.config.prediction_type == "flow_prediction"
    )


@pytest.mark.parametrize("sampler", NOISE_SAMPLERS)
def test_v_prediction_family_keeps_v_prediction(table, sampler):
    assert _build(table, "sd2", sampler).scheduler.config.prediction_type == "v_prediction"


# --- how names and schedules map onto the config -------------------------------------------------


@pytest.mark.parametrize(
    ("fid", "sampler", "schedule", "expected"),
    [
        ("sd15", "DPM++ 2M", "", {"use_karras_sigmas": True, "use_exponential_sigmas": False, "solver_order": 2}),
        ("sd15", "DPM++ 2M SDE", "", {"use_exponential_sigmas": True, "use_karras_sigmas": False}),
        ("sd15", "DPM++ 2M SDE Heun", "", {"algorithm_type": "sde-dpmsolver++", "solver_type": "heun"}),
        ("sd15", "DPM++ 3M SDE", "", {"algorithm_type": "sde-dpmsolver++", "solver_order": 3}),
        ("sd15", "DPM++ 2M", "Beta", {"use_beta_sigmas": True, "use_karras_sigmas": False}),
        ("sdxl", "Euler a", "", {"timestep_spacing": "linspace"}),  # SDXL's config says "leading"
        ("sdxl", "Euler", "SGM Uniform", {"timestep_spacing": "trailing"}),
        ("sdxl", "Euler", "DDIM", {"timestep_spacing": "leading", "steps_offset": 1}),
        ("sd15", "DDIM", "", {"timestep_spacing": "leading", "set_alpha_to_one": False, "clip_sample": False}),
        ("sd15", "PLMS", "", {"skip_prk_steps": True, "timestep_spacing": "leading"}),
        ("sd15", "UniPC", "", {"solver_type": "bh1", "solver_order": 3, "final_sigmas_type": "sigma_min"}),
        ("sd15", "DPM2", "", {"use_karras_sigmas": True}),
        ("sd3", "Euler", "", {"shift": 3.0, "use_karras_sigmas": False}),
        ("sd3", "Euler", "Karras", {"use_karras_sigmas": True}),
        ("sd3", "DPM++ 2M", "", {"use_flow_sigmas": True, "flow_shift": 3.0, "use_karras_sigmas": False}),
    ],
)
def test_sampler_and_schedule_set_the_config(table, fid, sampler, schedule, expected):
    config = _build(table, fid, sampler, schedule).scheduler.config
    assert {key: config[key] for key in expected} == expected


@pytest.mark.parametrize(
    ("sampler", "schedule", "recorded"),
    [
        ("DPM++ 2M", "", "Karras"),
        ("DPM++ 2M", "Automatic", "Karras"),
        ("DPM++ 2M SDE", "", "Exponential"),
        ("DPM++ 2M", "Uniform", "Uniform"),
        ("Euler a", "", "Automatic"),
        ("DDIM", "automatic", "Automatic"),
        ("Euler a", "Karras", "Karras"),
        ("DDIM", "Karras", "Automatic"),  # the schedule that ran, not the one asked for
    ],
)
def test_built_sampler_records_the_schedule_a1111_writes(table, sampler, schedule, recorded):
    built = _build(table, "sd15", sampler, schedule)
    assert (built.sampler_name, built.schedule) == (sampler, recorded)
    assert bool(built.warnings) == (schedule == "Karras" and sampler == "DDIM")


@pytest.mark.parametrize(
    ("first", "second"),
    [
        (("DPM++ SDE", "Karras"), ("DEIS", "")),  # leaked SDE keys once broke DEIS
        (("DPM++ 2M", "Karras"), ("DPM++ 2M", "Exponential")),  # two sigma flags at once used to raise
        (("Euler", "Beta"), ("Euler a", "")),
        (("DDIM", ""), ("Euler", "Karras")),
        (("UniPC", "Exponential"), ("PLMS", "")),
    ],
)
def test_building_after_another_sampler_gives_the_fresh_config(table, first, second):
    fam = family("sdxl")
    original = scheduler_config(fam)
    pristine = copy.deepcopy(original)
    fresh = dict(table.build(original, fam, "txt2img", *second).scheduler.config)
    table.build(original, fam, "txt2img", *first)
    again = dict(table.build(original, fam, "txt2img", *second).scheduler.config)
    assert again == fresh
    assert original == pristine


def test_build_does_not_carry_keys_the_class_does_not_take(table):
    config = _build(table, "sd15", "Euler").scheduler.config  # from SD1.5's PNDM config
    assert "skip_prk_steps" not in config and "set_alpha_to_one" not in config


@pytest.mark.parametrize(("sampler", "key"), [("Euler", "shift"), ("Heun", "shift"), ("DPM++ 2M", "flow_shift")])
def test_shift_overrides_the_checkpoint_shift(table, sampler, key):
    assert _build(table, "sd3", sampler, shift=5.0).scheduler.config[key] == 5.0
    assert _build(table, "sd3", sampler, shift=0).scheduler.config[key] == 3.0


def test_seed_fixes_the_brownian_noise_of_dpmpp_sde(table):
    assert _build(table, "sd15", "DPM++ SDE", seed=1234).scheduler.config.noise_sampler_seed == 1234


# --- custom sigma schedules ----------------------------------------------------------------------


def _sigmas(table: SamplerTable, fid: str, sampler: str, schedule: str, steps: int) -> list[float]:
    scheduler = _build(table, fid, sampler, schedule).scheduler
    scheduler.set_timesteps(steps)
    return scheduler.sigmas.tolist()


@pytest.mark.parametrize("schedule", ["Polyexponential", "KL Optimal", "Align Your Steps"])
@pytest.mark.parametrize("fid", ["sd15", "sdxl"])
def test_custom_sigma_schedules_fall_from_sigma_max_to_zero(table, fid, schedule):
    sigmas = _sigmas(table, fid, "Euler", schedule, 8)
    assert len(sigmas) == 9 and sigmas[-1] == 0.0
    assert sigmas[0] == pytest.approx(14.6146, abs=2e-3)
    assert all(a > b for a, b in itertools.pairwise(sigmas))


@pytest.mark.parametrize(
    ("fid", "third"), [("sd15", 3.861), ("sdxl", 3.771)]
)  # NVIDIA's tables differ from the third sigma on
def test_align_your_steps_uses_the_family_table_at_eleven_steps(table, fid, third):
    sigmas = _sigmas(table, fid, "Euler", "Align Your Steps", 11)
    assert len(sigmas) == 12 and sigmas[2] == pytest.approx(third, rel=1e-5)
    assert sigmas[-2] == pytest.approx(0.0292, abs=1e-4)


def test_euler_a_with_karras_runs_the_karras_sigmas(table):
    """The schedule reaches the scheduler: k-diffusion's Karras (rho 7) over SD 1.5's own sigma range."""
    import numpy as np

    built = _build(table, "sd15", "Euler a", "Karras")
    assert (built.schedule, built.warnings, type(built.scheduler).__name__) == ("Karras", (), "EulerAncestralSigmas")
    alphas = built.scheduler.alphas_cumprod.double().numpy()
    lo, hi = ((1 - alphas[0]) / alphas[0]) ** 0.5, ((1 - alphas[-1]) / alphas[-1]) ** 0.5
    ramp = np.linspace(0, 1, 6)
    expected = [*((hi ** (1 / 7) + ramp * (lo ** (1 / 7) - hi ** (1 / 7))) ** 7), 0.0]
    built.scheduler.set_timesteps(6)
    assert built.scheduler.sigmas.tolist() == pytest.approx(expected, rel=1e-5)  # float32 storage
    assert built.scheduler.timesteps[0].item() == pytest.approx(999.0, abs=1e-3)


def test_the_schedule_follows_the_step_count_the_pipeline_passes(table):
    """Computed in set_timesteps, so img2img and hires fix get it for their own step count."""
    scheduler = _build(table, "sd15", "Heun", "KL Optimal").scheduler
    for steps in (3, 7):
        scheduler.set_timesteps(steps)
        assert len(scheduler.timesteps) == 2 * steps - 1  # Heun evaluates every sigma after the first twice


# --- resolving names -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "schedule", "expected"),
    [
        ("DPM++ 2M", "", ("DPM++ 2M", "Karras")),
        ("DPM++ 2M Karras", "", ("DPM++ 2M", "Karras")),
        ("dpm++ 2m karras", "automatic", ("DPM++ 2M", "Karras")),
        ("DPM++ 2M SDE Exponential", "", ("DPM++ 2M SDE", "Exponential")),
        ("DPM++ 2M SDE Heun Karras", "", ("DPM++ 2M SDE Heun", "Karras")),
        ("DPM++ 2M Karras", "Exponential", ("DPM++ 2M", "Exponential")),  # an explicit schedule wins
        ("k_euler_a", "", ("Euler a", "Automatic")),
        ("k_euler_ancestral", "", ("Euler a", "Automatic")),
        ("k_dpmpp_2m_ka", "", ("DPM++ 2M", "Karras")),
        ("k_dpmpp_2m_sde_exp", "", ("DPM++ 2M SDE", "Exponential")),
        ("LMS Karras", "", ("LMS", "Karras")),
        ("DPM++ 2M", "sgm_uniform", ("DPM++ 2M", "SGM Uniform")),
        ("DPM++ 2M", "SGMUniform", ("DPM++ 2M", "SGM Uniform")),
        ("Euler", "align_your_steps", ("Euler", "Align Your Steps")),
        ("DDIM", "", ("DDIM", "Automatic")),
        ("  euler  ", "", ("Euler", "Automatic")),
    ],
)
def test_resolve_accepts_aliases_and_legacy_names(table, name, schedule, expected):
    spec, chosen = table.resolve(name, schedule)
    assert (spec.name, chosen.name) == expected


def test_resolve_picks_the_kind(table):
    assert table.resolve("Euler", kind="flow")[0].scheduler_class == "FlowMatchEulerDiscreteScheduler"
    assert table.resolve("Euler")[0].scheduler_class == "EulerDiscreteScheduler"


def test_check_with_an_empty_name_uses_the_family_default(table):
    assert table.check(family("sd15"), "txt2img", "")[0].name == table.default_sampler(family("sd15")) == "DPM++ 2M"
    assert table.check(family("sd3"), "img2img", "")[0].name == table.default_sampler(family("sd3")) == "Euler"


@pytest.mark.parametrize(
    ("fid", "task", "sampler", "schedule", "ran", "message"),
    [
        ("sd15", "txt2img", "Euler a", "Karras", ("Euler a", "Karras"), None),
        ("sd15", "txt2img", "LCM", "Exponential", ("LCM", "Exponential"), None),
        ("sd15", "txt2img", "DPM++ 2M", "KL Optimal", ("DPM++ 2M", "KL Optimal"), None),
        ("sd3", "txt2img", "DPM++ 2M", "Karras", ("DPM++ 2M", "Karras"), None),
        ("sd3", "img2img", "UniPC", "", ("UniPC", "Automatic"), None),
        ("sd15", "txt2img", "DDIM", "Karras", ("DDIM", "Automatic"),
         ("Schedule type 'Karras' does not work with sampler 'DDIM' on SD 1.5 (DDIM steps on its own timesteps, not "
          "on sigmas; A1111 ignores the schedule type there too); Automatic was used (the sampler's own schedule)")),
        ("sd15", "img2img", "PLMS", "Align Your Steps", ("PLMS", "Automatic"), "sampler 'PLMS' on SD 1.5 (PLMS steps"),
        ("sd3", "txt2img", "Euler", "Align Your Steps", ("Euler", "Automatic"),
         "'Align Your Steps' does not work with sampler 'Euler' on SD3 Medium (it is made for noise-prediction models)"),
        ("sd3", "txt2img", "Euler a", "Karras", ("Euler", "Karras"),
         "Sampler 'Euler a' does not work with SD3 Medium (flow-matching models); Euler was used"),
        ("sd3", "inpaint", "DPM2 a", "", ("Euler", "Automatic"), "Sampler 'DPM2 a' does not work with SD3 Medium"),
        ("sd15", "txt2img", "DPM++ 2M", "Turbo", ("DPM++ 2M", "Karras"),
         "Unknown schedule type 'Turbo'; Karras was used (valid: Automatic, Uniform, Karras"),
    ],
)  # fmt: skip
def test_requests_that_cannot_run_as_asked_fall_back_with_a_warning(table, fid, task, sampler, schedule, ran, message):
    choice = table.choose(family(fid), task, sampler, schedule)
    assert (choice.spec.name, choice.schedule.name) == ran
    if message is None:
        assert choice.warnings == ()
    else:
        assert len(choice.warnings) == 1 and message in choice.warnings[0]


@pytest.mark.parametrize(
    ("fid", "task", "sampler", "message"),
    [
        ("sd15", "txt2img", "Restart", "Unknown sampler 'Restart' for SD 1.5; choose one of: DPM++ 2M, DPM++ SDE"),
        ("sd3", "img2img", "DPM fast", "Unknown sampler 'DPM fast' for SD3 Medium; choose one of: Euler, Heun"),
        ("sd15", "txt2vid", "Euler", "unknown task 'txt2vid'; choose one of: txt2img, img2img, inpaint"),
    ],
)  # fmt: skip
def test_unknown_sampler_names_and_tasks_raise_naming_the_valid_choices(table, fid, task, sampler, message):
    with pytest.raises(SamplerError) as err:
        table.check(family(fid), task, sampler)
    assert message in str(err.value)
    if task != "txt2vid":
        assert isinstance(err.value, UnknownSampler)
        assert err.value.valid == table.samplers_for(family(fid), task)


def test_build_falls_back_like_choose(table):
    built = _build(table, "sd3", "Euler a", "Karras", task="img2img")
    assert (built.sampler_name, built.schedule) == ("Euler", "Karras")
    assert built.warnings == table.choose(family("sd3"), "img2img", "Euler a", "Karras").warnings
    assert type(built.scheduler).__name__ == "FlowMatchEulerDiscreteScheduler"  # Karras is its own option


def test_resolve_unknown_sampler_lists_the_valid_ones(table):
    with pytest.raises(UnknownSampler, match="unknown sampler 'DPM fast'; choose one of: DPM\\+\\+ 2M, "):
        table.resolve("DPM fast")


# --- extensions ----------------------------------------------------------------------------------


def test_extension_sampler_appears_for_its_kind_only(table):
    table.register_sampler(
        SamplerSpec("Euler trailing", "EulerDiscreteScheduler", {"timestep_spacing": "trailing"}, AUTOMATIC, "noise")
    )
    assert "Euler trailing" in table.samplers_for(family("sd15"), "img2img")
    assert "Euler trailing" not in table.samplers_for(family("sd3"), "txt2img")
    assert _build(table, "sd15", "euler TRAILING").scheduler.config.timestep_spacing == "trailing"


def test_extension_flow_sampler_appears_for_flow_families(table):
    spec = SamplerSpec(
        "Euler stochastic", "FlowMatchEulerDiscreteScheduler", {"stochastic_sampling": True}, AUTOMATIC, "flow"
    )
    table.register_sampler(spec)
    assert "Euler stochastic" in table.samplers_for(family("sd3"), "img2img")
    assert "Euler stochastic" not in table.samplers_for(family("sd15"), "txt2img")


def test_extension_schedule_type_is_offered_where_it_fits(table):
    table.register_schedule(ScheduleType("Trailing", "Trailing", ("trailing",), {"timestep_spacing": "trailing"}))
    assert "Trailing" in table.schedules_for(family("sd15"), "Euler")  # Euler takes every noise schedule
    assert "Trailing" not in table.schedules_for(family("sd15"), "DPM++ 2M")  # not among its config schedules
    assert "Trailing" not in table.schedules_for(family("sd3"), "Euler")  # noise kind only
    assert _build(table, "sd15", "Euler", "trailing").scheduler.config.timestep_spacing == "trailing"
    built = _build(table, "sd15", "DPM++ 2M", "trailing")  # no sigma function to fall back on: its own schedule
    assert built.schedule == "Karras" and "'Trailing' does not work with sampler 'DPM++ 2M'" in built.warnings[0]


def test_extension_sigma_schedule_runs_on_every_sampler_that_takes_sigmas(table):
    def linear(steps, model):  # sigma falling linearly from the model's top to its bottom, then 0
        return [model.sigma_max + (model.sigma_min - model.sigma_max) * k / max(steps - 1, 1) for k in range(steps)] + [
            0
        ]

    table.register_schedule(ScheduleType("Linear", "Linear", ("linear",), {}, ("noise", "flow"), custom_sigmas=linear))
    assert "Linear" in table.schedules_for(family("sd15"), "Euler a")
    assert "Linear" not in table.schedules_for(family("sd15"), "DDIM")
    for fid, sampler, top in (("sd15", "LMS", 14.6146), ("sd3", "DPM++ 2M", 1.0 - 1e-6), ("sd3", "Heun", 1.0)):
        sigmas = _sigmas(table, fid, sampler, "Linear", 4)
        assert sigmas[0] == pytest.approx(top, rel=1e-4) and sigmas[-1] == 0.0, (fid, sampler)


def test_a_sigma_function_that_breaks_the_contract_is_named(table):
    table.register_schedule(
        ScheduleType("Short", "Short", ("short",), {}, custom_sigmas=lambda steps, model: [1.0, 0.0])
    )
    scheduler = _build(table, "sd15", "Euler a", "Short").scheduler
    with pytest.raises(ValueError, match="schedule type 'Short' gave 2 sigmas for 4 steps"):
        scheduler.set_timesteps(4)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (SamplerSpec("euler A", "EulerDiscreteScheduler", {}, AUTOMATIC, "noise"), "already used by 'Euler a'"),
        (SamplerSpec("Mine", "EulerDiscreteScheduler", {}, AUTOMATIC, "noise", ("k_lms",)), "already used by 'LMS'"),
        (SamplerSpec("", "EulerDiscreteScheduler", {}, AUTOMATIC, "noise"), "must not be empty"),
    ],
)
def test_duplicate_or_empty_sampler_names_raise(table, spec, message):
    with pytest.raises(SamplerError, match=message):
        table.register_sampler(spec)


def test_same_name_in_the_other_kind_is_allowed(table):
    table.register_sampler(SamplerSpec("Euler a", "FlowMatchEulerDiscreteScheduler", {}, AUTOMATIC, "flow"))
    assert "Euler a" in table.samplers_for(family("sd3"), "txt2img")


def test_duplicate_schedule_alias_raises(table):
    with pytest.raises(SamplerError, match="'karras' of 'Mine' is already used by 'Karras'"):
        table.register_schedule(ScheduleType("Mine", "Mine", ("karras",), {}))


def test_unknown_kind_raises():
    with pytest.raises(SamplerError, match="use one of: noise, flow"):
        SamplerSpec("X", "EulerDiscreteScheduler", {}, AUTOMATIC, "edm")


def test_missing_package_gives_an_install_hint(table):
    needs = SamplerSpec("Needy", "EulerDiscreteScheduler", {}, AUTOMATIC, "noise", requires=("no_such_package_xyz",))
    table.register_sampler(needs)
    with pytest.raises(SamplerError, match="needs the Python package 'no_such_package_xyz'.*pip install"):
        _build(table, "sd15", "Needy")


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (
            SamplerSpec("Typo", "EulerDiscreteScheduler", {"use_karas_sigmas": True}, AUTOMATIC, "noise"),
            "does not take",
        ),
        (SamplerSpec("Nope", "NoSuchScheduler", {}, AUTOMATIC, "noise"), "not a diffusers scheduler class"),
    ],
)
def test_broken_extension_specs_raise_at_build(table, spec, message):
    table.register_sampler(spec)
    with pytest.raises(SamplerError, match=message):
        _build(table, "sd15", spec.name)


def test_table_without_automatic_gets_it():
    table = SamplerTable(samplers=[], schedules=[])
    assert table.schedule_names() == [AUTOMATIC]
    with pytest.raises(SamplerError, match="no sampler is registered"):
        table.default_sampler(family("sd15"))


# --- A1111 API views -----------------------------------------------------------------------------


def test_samplers_json_matches_a1111_shape(table):
    items = {item["name"]: item for item in samplers_json(table)}
    assert items["DPM++ 2M"] == {"name": "DPM++ 2M", "aliases": ["k_dpmpp_2m"], "options": {"scheduler": "karras"}}
    assert items["Euler a"]["options"] == {"uses_ensd": "True"}
    assert items["DPM++ 2M SDE"]["options"]["scheduler"] == "exponential"
    assert list(items) == NOISE_SAMPLERS


def test_samplers_json_for_a_flow_family_and_task(table):
    assert [item["name"] for item in samplers_json(table, family("sd3"), "img2img")] == FLOW_SAMPLERS


def test_schedulers_json_matches_a1111_shape(table):
    items = {item["name"]: item for item in schedulers_json(table)}
    assert items["karras"] == {
        "name": "karras",
        "label": "Karras",
        "aliases": None,
        "default_rho": 7.0,
        "need_inner_model": False,
    }
    assert items["sgm_uniform"]["aliases"] == ["SGMUniform"]
    assert list(items)[:3] == ["automatic", "uniform", "karras"]


def test_importing_the_table_needs_no_torch():
    code = "import sys, webui.generation.samplers as s; s.SamplerTable(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# --- end to end on tiny pipelines ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("fid", "task", "sampler", "schedule"),
    [
        ("sd15", "txt2img", "DPM++ 2M", ""),
        ("sd15", "txt2img", "Euler", "Align Your Steps"),
        ("sd15", "txt2img", "Euler a", "Karras"),
        ("sd15", "img2img", "UniPC", ""),
        ("sd15", "img2img", "Heun", "KL Optimal"),  # second order on custom sigmas, sliced by the strength
        ("sd15", "img2img", "LCM", "Karras"),
        ("sd15", "inpaint", "Euler a", ""),
        ("sd15", "inpaint", "DPM2 a", "Polyexponential"),
        ("sdxl", "txt2img", "DPM++ 2M SDE", ""),
        ("sdxl", "img2img", "Euler", "KL Optimal"),
        ("sdxl", "img2img", "DPM++ SDE", "Align Your Steps"),
        ("sdxl_refiner", "img2img", "DDIM", ""),
        ("sd3", "txt2img", "DPM++ 2M", ""),
        ("sd3", "txt2img", "UniPC", ""),
        ("sd3", "txt2img", "Heun", "Simple"),
        ("sd3", "img2img", "Euler", ""),
        ("sd3", "img2img", "Euler", "Karras"),
        ("sd3", "img2img", "UniPC", "SGM Uniform"),  # scale_noise from our subclass
        ("sd3", "inpaint", "Heun", ""),
        ("sd3", "inpaint", "DPM++ 2M SDE", "KL Optimal"),
        ("sd35_medium", "txt2img", "Euler", "Beta"),
    ],
)
def test_tiny_pipeline_runs_with_the_built_sampler(table, fresh_tiny_pipe, fid, task, sampler, schedule):
    import diffusers
    import torch

    fam = family(fid)
    pipe = fresh_tiny_pipe(fid)
    if type(pipe).__name__ != fam.pipelines[task]:  # same weights, the task's pipeline class
        pipe = getattr(diffusers, fam.pipelines[task])(**pipe.components)
        pipe.set_progress_bar_config(disable=True)
    built = table.build(scheduler_config(fam), fam, task, sampler, schedule, steps=3, seed=0)
    pipe.scheduler = built.scheduler
    kwargs = {"height": 64, "width": 64}
    if task != "txt2img":
        kwargs.update(image=torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(1)), strength=0.7)
    if task == "inpaint":
        kwargs["mask_image"] = torch.ones(1, 1, 64, 64)
    out = pipe(
        prompt="a cat",
        num_inference_steps=3,
        output_type="latent",
        generator=torch.Generator().manual_seed(0),
        **kwargs,
        **built.call_kwargs,
    )
    assert out.images.shape == (1, fam.latent_channels, 8, 8)
    assert torch.isfinite(out.images).all()
